"""Byte-range splitting in whole missions (in-process on moto): bytes mode cuts the input into
chunks on line or record boundaries, lines mode keeps exact line counts; in both, each worker
fetches only its own range of the input, and the scheduler of a bytes-mode mission reads at most
64 KiB of it."""

from __future__ import annotations

import json
import random

import pytest

from chalicelib.splitting import OVERLAP_BYTES
from local.inprocess import InProcessCluster
from local.s3reads import S3ReadCounter
from tests.functional.test_mission import run_to_completion, submit, transactions
from worker_ami.apps import fasta_stats, seq_stats

KIB = 1024


@pytest.fixture
def counted(tmp_path):
    """A cluster whose every client reports the bytes of each GetObject."""
    reads = S3ReadCounter()
    with reads.installed(), InProcessCluster.running(workdir=tmp_path) as cluster:
        yield cluster, reads


def fasta(records: int, seed: int = 5) -> bytes:
    """Wrapped FASTA: records of 0-9,000 bases in lines of 60, a few unwrapped and long."""
    rng = random.Random(seed)
    out = [b"; a preamble line, before any record\n"]
    for n in range(records):
        length = rng.choice([0, 50, 700, 3000, 9000]) if n % 11 else 40_000
        seq = "".join(rng.choices("ACGTN", k=length)).encode()
        width = 60 if n % 7 else max(length, 1)
        lines = [seq[i : i + width] for i in range(0, len(seq), width)]
        out.append(b">rec%d sample %d\n" % (n, n) + b"".join(line + b"\n" for line in lines))
    return b"".join(out)


def config(name: str, key: str, split: dict, app: dict, instances: int = 3) -> dict:
    return {
        "name": name,
        "input": key,
        "split": split,
        "app": app,
        "instances": {"max_instances": instances, "slots": 2},
    }


def source_bucket(cluster: InProcessCluster) -> str:
    return cluster.stack.outputs["SourceBucketName"]


def test_fasta_chunks_merge_to_the_single_process_run(counted):
    cluster, reads = counted
    body = fasta(120)
    assert len(body) > 256 * KIB  # the scheduler's 64 KiB is a small part of it
    chunks = 23
    split = {"mode": "bytes", "chunks": chunks}  # align: fasta-stats asks for records
    mission_id = submit(cluster, config("fasta", "genome.fa", split, {"builtin": "fasta-stats"}))
    cluster.upload("genome.fa", body)

    reads.reset()
    cluster.deliver_source_events()
    scheduler = reads.of(source_bucket(cluster))
    assert sum(r.bytes for r in scheduler) <= 64 * KIB
    assert all(r.range is not None for r in scheduler)

    reads.reset()
    mission = run_to_completion(cluster, mission_id)
    assert mission["status"] == "SUCCEEDED", mission
    assert mission["transactions"]["total"] == chunks
    expected = "".join(fasta_stats.stats(body.splitlines(keepends=True))).encode()
    assert cluster.result(mission["result"]) == expected

    fetched = reads.of(source_bucket(cluster), "genome.fa")
    assert fetched and all(r.range is not None for r in fetched)  # never the whole input
    total = sum(r.bytes for r in fetched)
    assert total <= 1.01 * len(body) + 64 * KIB * chunks
    # Each chunk's slice: its bytes, the byte before, and a little past its end.
    rows = transactions(cluster, mission_id)
    assert [(t["start"], t["end"]) for t in rows][-1][1] == len(body)
    largest = max(t["end"] - t["start"] for t in rows)
    assert max(r.bytes for r in fetched) <= largest + 1 + OVERLAP_BYTES


def test_line_chunks_with_long_lines_empty_chunks_and_no_final_newline(counted):
    cluster, reads = counted
    rng = random.Random(3)
    lines = ["".join(rng.choices("abc xyz", k=rng.choice([0, 5, 80, 3000]))) for _ in range(400)]
    lines[100] = "L" * (3 * OVERLAP_BYTES)  # longer than the overlap: more ranges are fetched
    body = "\n".join(lines).encode()  # no final newline
    cat = {"argv": ["cp", "{input}", "{output}"]}
    split = {"mode": "bytes", "chunk_bytes": 4096, "align": "line"}
    mission_id = submit(cluster, config("lines cat", "text/long.txt", split, cat))
    cluster.upload("text/long.txt", body)
    cluster.deliver_source_events()
    reads.reset()
    mission = run_to_completion(cluster, mission_id)
    assert mission["status"] == "SUCCEEDED", mission
    chunks = mission["transactions"]["total"]
    assert chunks == -(-len(body) // 4096)
    assert cluster.result(mission["result"]) == body  # cat: the merge is the input itself
    # The long line's chunks hold no line start: they ran too (every chunk succeeded), on an
    # empty input, and added nothing (the result is the input, byte for byte).
    assert mission["transactions"]["SUCCEEDED"] == chunks
    assert len(lines[100]) >= 2 * 4096  # so at least one chunk lies wholly inside it
    total = reads.bytes_of(source_bucket(cluster), "text/long.txt")
    assert total <= 1.01 * len(body) + 64 * KIB * chunks


def test_lines_mode_workers_fetch_only_their_slices(counted):
    cluster, reads = counted
    rng = random.Random(9)
    rows = ["".join(rng.choices("ACGT", k=rng.randint(1, 120))) for _ in range(1000)]
    body = ("\n".join(rows) + "\n").encode()
    split = {"mode": "lines", "lines_per_transaction": 37}
    mission_id = submit(cluster, config("lines", "reads.txt", split, {"builtin": "seq-stats"}))
    cluster.upload("reads.txt", body)
    cluster.deliver_source_events()
    reads.reset()
    mission = run_to_completion(cluster, mission_id)
    assert mission["status"] == "SUCCEEDED", mission
    assert mission["transactions"]["total"] == 28  # 1,000 lines, 37 per transaction
    expected = "".join(seq_stats.stats(body.splitlines(keepends=True), 0)).encode()
    assert cluster.result(mission["result"]) == expected
    fetched = reads.of(source_bucket(cluster), "reads.txt")
    # One ranged read per slice, exactly its lines: the input once in all.
    assert len(fetched) == 28 and all(r.range for r in fetched)
    assert sum(r.bytes for r in fetched) == len(body)
    results = reads.of(cluster.stack.outputs["ResultBucketName"])
    index = [r for r in results if r.key.startswith("plans/")]  # the rest: the merge's reads
    assert len(index) == 28 and all(r.bytes <= 16 for r in index)  # two offsets per slice


def test_chunk_bytes_beyond_the_stage_limit_fails_at_planning(counted):
    cluster, _ = counted
    split = {"mode": "bytes", "chunk_bytes": 1}
    cat = {"argv": ["cp", "{input}", "{output}"]}
    mission_id = submit(cluster, config("too many", "many.txt", split, cat))
    cluster.upload("many.txt", b"x\n" * 60_000)  # 120,000 chunks of a byte: above 100,000
    cluster.deliver_source_events()
    mission = json.loads(cluster.get(f"/missions/{mission_id}").body)
    assert mission["status"] == "FAILED"
    assert "120000 transactions" in mission["error"]
    assert cluster.instance_states(mission_id) == {}
