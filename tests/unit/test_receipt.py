"""The receipt, with no AWS: the manifest a merge writes from typed values, the pure verifier
that checks a result and its parts against it, the worker's part stamp, and the email line that
names the manifest."""

from __future__ import annotations

import hashlib
import io
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chalicelib.config import parse_mission_config
from chalicelib.domain import Mission, Transaction, Usage
from chalicelib.layout import PartStamp
from chalicelib.notify import FailedTransaction, MissionReport, body_budget, email_body
from chalicelib.receipt import (
    FORMAT,
    FORMAT_1,
    Chunk,
    ManifestWriter,
    MergedPart,
    b64_sha256,
    full_object_checksum,
    lines,
    part_problem,
    parts_digest,
    verify,
)
from chalicelib.settings import Settings
from chalicelib.states import MissionStatus, TransactionStatus

T = TransactionStatus
NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
CONFIG = parse_mission_config(
    '{"name": "n", "input": "in/x.fa", "split": {"mode": "count", "count": 5,'
    ' "interval": {"start": 0, "end": 50}}, "app": {"builtin": "kmer-match"},'
    ' "notify": "owner@example.org"}',
    Settings.from_env({}),
)
MISSION = Mission(
    mission_id="m-1",
    name="n",
    status=MissionStatus.RUNNING,
    config=CONFIG,
    input_key="in/x.fa",
    created_at=NOW,
    submitted_by="arn:aws:iam::123456789012:user/ana",
    input_etag="0123abcd",
    input_version="v-42",
    input_bytes=1000,
    total=5,
    succeeded=4,
    failed=1,
)
PARTS = {0: b"ref 1\nref 3\n", 1: b"", 2: b"ref 22\n", 4: b"ref 41\nref 47\nref 49\n"}
KEY = "parts/m-1/{:08d}.1.out"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def transactions() -> list[Transaction]:
    found = []
    for i in range(5):
        status = T.FAILED if i == 3 else T.SUCCEEDED
        found.append(
            Transaction(
                "m-1",
                i,
                status,
                i * 10,
                i * 10 + 10,
                attempts=3 if i == 3 else 1,
                claim=1,
                lease_owner=f"i-{i % 2}/0",
                exit_code=2 if i == 3 else None,  # a worker's own record may not be in yet
                run_seconds=0.5 if i == 3 else None,
                part_key=None if i == 3 else KEY.format(i),
            )
        )
    return found


def build(parts: dict[int, bytes] = PARTS) -> tuple[bytes, bytes]:
    """The manifest and the result, as the merge makes them: part by part, in index order."""
    out = io.BytesIO()
    writer = ManifestWriter(out.write)
    writer.mission(MISSION, source_bucket="src", result_bucket="res", result_key="results/m-1/r")
    result = b""
    for t in transactions():
        body = parts.get(t.index)
        if body is None:
            writer.transaction(t, None)
            continue
        stamp = PartStamp(sha(body), 0, 1.25)
        writer.transaction(t, MergedPart(t.part_key or "", len(body), sha(body), stamp))
        result += body
    writer.result(key="results/m-1/r", size=len(result), usage=Usage(12.5, 0.0012), merged_at=NOW)
    manifest = out.getvalue()
    assert writer.sha256 == sha(manifest)
    return manifest, result


def check(manifest: bytes, result: bytes, parts: dict[str, bytes] | None = None):
    read_part = None
    if parts is not None:

        def read_part(key: str):
            return None if key not in parts else io.BytesIO(parts[key])

    return verify(manifest.splitlines(), lambda: io.BytesIO(result), read_part)


def stored_parts() -> dict[str, bytes]:
    return {KEY.format(i): body for i, body in PARTS.items()}


# ---- the manifest ------------------------------------------------------------------------


def test_the_manifest_is_json_lines_mission_transactions_result() -> None:
    manifest, result = build()
    records = [json.loads(line) for line in manifest.splitlines()]
    assert [r["kind"] for r in records] == ["mission"] + ["transaction"] * 5 + ["result"]
    head, *rows, foot = records
    assert head["format"] == FORMAT
    assert head["input"] == {
        "bucket": "src",
        "key": "in/x.fa",
        "version_id": "v-42",
        "etag": "0123abcd",
        "bytes": 1000,
        "lines": None,
    }
    assert head["owner"] == "arn:aws:iam::123456789012:user/ana"
    assert head["config"] == CONFIG.model_dump(mode="json")
    assert head["plan"] == {"transactions": 5, "slices": "interval"}
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    offsets = [r["part"]["offset"] for r in rows if r["part"]]
    assert offsets == [0, 12, 12, 19]  # contiguous; the empty part takes no room
    assert rows[2]["part"] == {
        "key": KEY.format(2),
        "offset": 12,
        "bytes": 7,
        "sha256": sha(b"ref 22\n"),
    }
    assert rows[2]["worker"] == "i-0/0" and rows[2]["slice"] == {"start": 20, "end": 30}
    # A merged part's exit code and seconds are its worker's stamp; a failed one's, the store's.
    assert (rows[2]["exit_code"], rows[2]["seconds"]) == (0, 1.25)
    assert rows[3]["part"] is None and rows[3]["status"] == "FAILED"
    assert (rows[3]["exit_code"], rows[3]["attempts"]) == (2, 3)
    digests = [sha(body) for _, body in sorted(PARTS.items())]
    assert foot["bytes"] == len(result) and foot["parts_sha256"] == sha("".join(digests).encode())
    assert foot["parts_sha256"] == parts_digest(digests) and foot["s3_checksum_sha256"] is None
    assert (foot["transactions"], foot["parts"]) == (5, 4)
    assert foot["estimated_cost_usd"] == 0.0012
    assert manifest.isascii() and build() == (manifest, result)  # deterministic


def test_the_writer_takes_transactions_in_index_order_only() -> None:
    writer = ManifestWriter(lambda _: None)
    first, second = transactions()[:2]
    writer.transaction(second, None)
    with pytest.raises(ValueError, match="index order"):
        writer.transaction(first, None)


def test_the_writer_refuses_a_result_other_than_its_parts() -> None:
    writer = ManifestWriter(lambda _: None)
    t = transactions()[0]
    writer.transaction(t, MergedPart("k", 5, sha(b"12345"), PartStamp(sha(b"12345"), 0, 1)))
    with pytest.raises(ValueError, match="4 bytes from parts of 5"):
        writer.result(key="r", size=4, usage=Usage(0, 0), merged_at=NOW)


def test_a_writer_for_a_later_range_starts_at_its_offset() -> None:
    out = io.BytesIO()
    writer = ManifestWriter(out.write, offset=1000)
    t = transactions()[4]
    writer.transaction(t, MergedPart("k", 3, sha(b"abc"), PartStamp(sha(b"abc"), 0, 1)))
    assert json.loads(out.getvalue())["part"]["offset"] == 1000 and writer.offset == 1003


# ---- verify ------------------------------------------------------------------------------


def test_a_result_verifies_against_its_manifest() -> None:
    manifest, result = build()
    assert check(manifest, result) == []
    assert check(manifest, result, stored_parts()) == []


def test_a_tampered_result_is_named_by_index_and_key() -> None:
    manifest, result = build()
    tampered = result.replace(b"ref 22", b"ref 23")
    problems = check(manifest, tampered)
    # Every byte of the result is in exactly one part's range: the range names the change.
    assert [(p.index, p.key) for p in problems] == [(2, KEY.format(2))]
    assert "bytes [12, 19) of the result do not match" in problems[0].what
    assert str(problems[0]).startswith(f"#2 {KEY.format(2)}: ")


def test_a_tampered_part_object_is_named_by_index_and_key() -> None:
    manifest, result = build()
    parts = stored_parts() | {KEY.format(4): b"ref 41\n"}
    problems = check(manifest, result, parts)
    assert [(p.index, p.key) for p in problems] == [(4, KEY.format(4))]
    assert "the part object (7 bytes" in problems[0].what
    assert check(manifest, result) == []  # without the parts, the result alone still checks


def test_a_missing_part_object_is_named() -> None:
    manifest, result = build()
    parts = stored_parts()
    del parts[KEY.format(0)]
    problems = check(manifest, result, parts)
    assert [(p.index, p.key, p.what) for p in problems] == [
        (0, KEY.format(0), "the part object is gone")
    ]


def test_a_result_cut_short_or_grown_is_caught() -> None:
    manifest, result = build()
    short = check(manifest, result[:-5])
    assert short[0].index == 4 and "the result ends 5 bytes into" in short[0].what
    grown = check(manifest, result + b"extra\n")
    assert [p.index for p in grown] == [None] and f"{len(result) + 6} bytes" in grown[0].what


def test_a_truncated_or_foreign_manifest_is_caught() -> None:
    manifest, result = build()
    truncated = b"\n".join(manifest.splitlines()[:-1])
    assert [p.what for p in check(truncated, result)] == [
        "the manifest has no result line: it is truncated"
    ]
    assert "does not begin with" in check(b'{"kind": "x"}\n', result)[0].what
    garbled = manifest.replace(b'"kind":"transaction","index":1', b"not json", 1)
    problems = check(garbled, result)
    assert "manifest line 3 is not JSON" in problems[0].what
    assert any("lists 4 transactions" in p.what for p in problems)


def test_a_manifest_with_a_moved_part_is_caught() -> None:
    manifest, result = build()
    moved = manifest.replace(b'"offset":12,"bytes":7', b'"offset":13,"bytes":7', 1)
    problems = check(moved, result)
    assert problems and problems[0].index == 2 and "offset 13" in problems[0].what


def test_a_manifest_built_in_chunks_is_the_manifest_built_at_once() -> None:
    """A merge over several invocations: each writes the lines of its span (a writer starting
    at the offset and index where the last stopped); the end puts them together."""
    whole, result = build()
    head = io.BytesIO()
    final = ManifestWriter(head.write)
    final.mission(MISSION, source_bucket="src", result_bucket="res", result_key="results/m-1/r")
    offset, last = 0, -1
    for span in (transactions()[:2], transactions()[2:3], [], transactions()[3:]):
        out = io.BytesIO()
        writer = ManifestWriter(out.write, offset=offset, last_index=last)
        for t in span:
            body = PARTS.get(t.index)
            part = None
            if body is not None:
                part = MergedPart(
                    t.part_key or "", len(body), sha(body), PartStamp(sha(body), 0, 1.25)
                )
            writer.transaction(t, part)
        chunk = writer.chunk(out.getvalue())
        final.append(chunk)
        offset, last = offset + chunk.size, chunk.last_index
    final.result(key="results/m-1/r", size=len(result), usage=Usage(12.5, 0.0012), merged_at=NOW)
    assert head.getvalue() == whole and final.sha256 == sha(whole)
    with pytest.raises(ValueError, match="a chunk ending at 1 after 4"):
        final.append(Chunk(b"", 1, (), 0, 1))


def test_the_result_line_must_name_the_parts_and_the_checksum_s3_holds() -> None:
    manifest, result = build()
    foot = json.loads(manifest.splitlines()[-1])
    other = manifest.replace(foot["parts_sha256"].encode(), b"0" * 64)
    problems = check(other, result)
    assert [p.key for p in problems] == ["results/m-1/r"]
    assert "result line says " + "0" * 64 in problems[0].what
    named = manifest.replace(b'"s3_checksum_sha256":null', b'"s3_checksum_sha256":"abc-2"')
    ok = verify(named.splitlines(), lambda: io.BytesIO(result), None, lambda: "abc-2")
    bad = verify(named.splitlines(), lambda: io.BytesIO(result), None, lambda: "xyz-2")
    assert ok == [] and ["S3 holds checksum xyz-2" in p.what for p in bad] == [True]
    assert verify(named.splitlines(), lambda: io.BytesIO(result), None, lambda: None) == []


def test_a_format_1_manifest_still_verifies_by_the_whole_sha256() -> None:
    manifest, result = build()
    *rows, foot = manifest.splitlines()
    footer = json.loads(foot)
    footer["sha256"] = sha(result)
    del footer["parts_sha256"], footer["s3_checksum_sha256"]
    old = b"\n".join([rows[0].replace(FORMAT.encode(), FORMAT_1.encode()), *rows[1:]])
    old += b"\n" + json.dumps(footer).encode()
    assert check(old, result) == []
    problems = check(old, result.replace(b"ref 22", b"ref 23"))
    assert [p.index for p in problems] == [2, None]
    assert "is not the one the manifest describes" in problems[1].what


def test_lines_split_across_reads_and_feed_the_digest() -> None:
    manifest, _ = build()

    class Trickle(io.RawIOBase):
        def __init__(self) -> None:
            self.data = io.BytesIO(manifest)

        def read(self, size: int = -1) -> bytes:
            return self.data.read(7)

    digest = hashlib.sha256()
    assert list(lines(Trickle(), digest)) == manifest.splitlines()  # type: ignore[arg-type]
    assert digest.hexdigest() == sha(manifest)


# ---- the worker's stamp, and what the merge makes of it ----------------------------------


def test_a_stamp_goes_up_as_metadata_and_comes_back(tmp_path: Path) -> None:
    body = random.Random(1).randbytes(3 * 1024 * 1024 + 5)
    part = tmp_path / "part.out"
    part.write_bytes(body)
    stamp = PartStamp.of_file(part, 0, 1.23456)
    assert stamp == PartStamp(sha(body), 0, 1.235)
    args = stamp.upload_args()
    assert args["ChecksumAlgorithm"] == "SHA256"
    assert PartStamp.from_metadata(args["Metadata"]) == stamp  # type: ignore[arg-type]
    assert PartStamp.from_metadata({}) is None
    assert PartStamp.from_metadata({"sha256": "not a digest"}) is None
    odd = PartStamp.from_metadata({"sha256": sha(b""), "exit-code": "x", "seconds": "nan"})
    assert odd == PartStamp(sha(b""), None, 0.0)


def test_part_problem_names_what_does_not_match() -> None:
    good, bad = sha(b"a"), sha(b"b")
    stamp = PartStamp(good, 0, 1.0)
    assert part_problem(stamp, good, None) is None
    assert part_problem(stamp, good, b64_sha256(good)) is None
    assert "no sha256 from its worker" in (part_problem(None, good, None) or "")
    assert f"its worker uploaded {good}" in (part_problem(stamp, bad, None) or "")
    assert "S3 holds checksum" in (part_problem(stamp, good, b64_sha256(bad)) or "")


def test_only_a_full_object_checksum_is_compared() -> None:
    digest = b64_sha256(sha(b"a"))
    assert full_object_checksum({"ChecksumSHA256": digest}) == digest
    assert full_object_checksum({"ChecksumSHA256": digest + "-3"}) is None  # multipart
    assert full_object_checksum({"ChecksumSHA256": digest, "ChecksumType": "COMPOSITE"}) is None
    assert full_object_checksum({}) is None


# ---- the email names the manifest, and no failure list cuts it ---------------------------


def report(failures: list[FailedTransaction]) -> MissionReport:
    return MissionReport(
        mission_id="m-1",
        name="n",
        status="FAILED",
        total=len(failures) + 1,
        succeeded=1,
        failed=len(failures),
        duration_seconds=1.0,
        instance_seconds=1.0,
        estimated_cost=0.1,
        instances=1,
        result_uri="s3://res/results/m-1/result.out",
        error=None,
        failures=failures,
        manifest_uri="s3://res/results/m-1/manifest.json",
        manifest_sha256="ab" * 32,
    )


def test_the_email_names_the_manifest_and_its_sha256() -> None:
    body = email_body(report([]))
    assert "Receipt:          s3://res/results/m-1/manifest.json\n" in body
    assert f"Receipt sha256:   {'ab' * 32}\n" in body
    assert "Check it with:    lighthpc verify m-1\n" in body


def test_the_manifest_lines_survive_the_largest_failure_list() -> None:
    failures = [FailedTransaction(i, i, i + 1, 3, 1, "\U0001f600" * 2000) for i in range(10_000)]
    r = report(failures)
    body = email_body(r)
    assert len(body.encode()) <= body_budget(r)
    assert "Receipt:          s3://res/results/m-1/manifest.json\n" in body
    assert f"Receipt sha256:   {'ab' * 32}\n" in body
