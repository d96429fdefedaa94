"""The agent's side of byte-range splitting, against a fake S3: each transaction's `input` is its
slice only (a link to a read-only file in its scratch), fetched by ranged reads of the pinned
version, resumed where a broken stream stopped."""

from __future__ import annotations

import json
import re
import stat
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from botocore.exceptions import ResponseStreamingError

from chalicelib.config import parse_mission_config
from chalicelib.domain import Mission, Transaction
from chalicelib.planning import Plan
from chalicelib.settings import Settings
from chalicelib.splitting import LineOffsets, encode_offsets
from chalicelib.states import MissionStatus, TransactionStatus
from worker_ami.agent import WorkerAgent

SETTINGS = Settings.from_env({})
DATA = b"".join(b"line %d %s\n" % (i, b"x" * (i % 50)) for i in range(300)) + b"tail"


class Body:
    def __init__(self, data: bytes, break_after: int | None) -> None:
        self.data, self.break_after, self.closed = data, break_after, False

    def iter_chunks(self, chunk_size: int):
        for at in range(0, len(self.data), 7):
            if self.break_after is not None and at >= self.break_after:
                raise ResponseStreamingError(error="connection reset")
            yield self.data[at : at + 7]

    def read(self) -> bytes:
        return self.data

    def close(self) -> None:
        self.closed = True


class FakeS3:
    """Objects by (bucket, key); every GetObject must be ranged, and the input's pinned."""

    def __init__(self, objects: dict[tuple[str, str], bytes], breaks: int = 0) -> None:
        self.objects, self.breaks = objects, breaks
        self.calls: list[dict] = []
        self.bodies: list[Body] = []
        self.sent: dict[str, int] = {}  # bytes per key

    def get_object(self, **params):
        self.calls.append(params)
        first, last = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", params["Range"]).groups())
        data = self.objects[(params["Bucket"], params["Key"])][first : last + 1]
        broken = self.breaks > 0 and len(data) > 20
        self.breaks -= broken
        body = Body(data, 14 if broken else None)
        self.sent[params["Key"]] = self.sent.get(params["Key"], 0) + len(data)
        self.bodies.append(body)
        return {"Body": body, "ContentLength": len(data)}


def agent(s3: FakeS3, workdir: Path) -> WorkerAgent:
    return WorkerAgent(
        settings=SETTINGS,
        store=None,
        aws=SimpleNamespace(s3=s3, ec2=None),
        metadata=None,
        workdir=workdir,
    )  # type: ignore[arg-type]


def mission(split: dict, input_bytes: int, lines: int | None = None) -> Mission:
    body = {"name": "m", "input": "in.txt", "split": split, "app": {"argv": ["cat", "{input}"]}}
    config = parse_mission_config(json.dumps(body), SETTINGS)
    return Mission(
        "m-1",
        "m",
        MissionStatus.RUNNING,
        config,
        "in.txt",
        datetime.now(UTC),
        input_version="v7",
        input_bytes=input_bytes,
        input_lines=lines,
    )


def inputs_of(m: Mission, s3: FakeS3, tmp_path: Path) -> list[bytes]:
    worker = agent(s3, tmp_path)
    out = []
    for s in m.plan.slices():
        scratch = tmp_path / f"t{s.index}"
        scratch.mkdir()
        txn = Transaction(m.mission_id, s.index, TransactionStatus.RUNNING, s.start, s.end)
        view = worker._input_for(m, txn, scratch)
        assert view == scratch / "input" and view.is_symlink()
        assert not Path(view.readlink()).is_absolute()  # relative, inside the scratch
        target = view.resolve()
        assert target.parent == scratch.resolve()
        assert stat.S_IMODE(target.stat().st_mode) == 0o444  # read-only for everyone
        out.append(view.read_bytes())
    return out


def test_bytes_mode_inputs_are_slices_of_the_pinned_version(tmp_path):
    s3 = FakeS3({(SETTINGS.source_bucket, "in.txt"): DATA})
    m = mission({"mode": "bytes", "chunks": 9}, len(DATA))
    parts = inputs_of(m, s3, tmp_path)
    assert b"".join(parts) == DATA and len(parts) == 9
    assert all(p.endswith(b"\n") for p in parts[:-1]) and parts[-1].endswith(b"tail")
    assert all(c["VersionId"] == "v7" and c["Range"] for c in s3.calls)
    assert all(b.closed for b in s3.bodies)
    assert s3.sent["in.txt"] < len(DATA) + 9 * (1 + 8 * 1024)


def test_a_broken_stream_is_read_on_from_where_it_stopped(tmp_path):
    s3 = FakeS3({(SETTINGS.source_bucket, "in.txt"): DATA}, breaks=2)
    m = mission({"mode": "bytes", "chunks": 3}, len(DATA))
    assert b"".join(inputs_of(m, s3, tmp_path)) == DATA
    resumed = [c["Range"] for c in s3.calls]
    assert len(resumed) == 3 + 2  # one more request per break


def test_a_stream_that_keeps_breaking_fails_the_attempt(tmp_path):
    s3 = FakeS3({(SETTINGS.source_bucket, "in.txt"): DATA}, breaks=10)
    m = mission({"mode": "bytes", "chunks": 1}, len(DATA))
    with pytest.raises(ResponseStreamingError):
        inputs_of(m, s3, tmp_path)


def test_lines_mode_reads_its_offsets_then_exactly_its_lines(tmp_path):
    index = LineOffsets(40)
    index.feed(DATA)
    offsets = encode_offsets(index.slice_offsets())
    s3 = FakeS3(
        {
            (SETTINGS.source_bucket, "in.txt"): DATA,
            (SETTINGS.result_bucket, "plans/m-1/line-offsets.u64"): offsets,
        }
    )
    m = mission({"mode": "lines", "lines_per_transaction": 40}, len(DATA), index.lines)
    assert m.plan == Plan.by_lines(301, 40)
    parts = inputs_of(m, s3, tmp_path)
    assert b"".join(parts) == DATA
    assert [p.count(b"\n") for p in parts] == [40] * 7 + [20]
    reads = [c for c in s3.calls if c["Key"] == "in.txt"]
    assert s3.sent["in.txt"] == len(DATA)  # the input once in all, each slice exactly
    assert s3.sent["plans/m-1/line-offsets.u64"] == 8 * 16 - 8  # two offsets a slice (last: one)
    assert len(reads) == 8 and all(c["VersionId"] == "v7" for c in reads)
