"""The merge's arithmetic, with no AWS: part sizes within S3's limits, the checkpoint as it is
stored, the time budget of an invocation."""

from __future__ import annotations

import itertools

from chalicelib.merge import (
    MAX_PARTS,
    MIN_PART,
    Checkpoint,
    _Budget,
    part_size,
)

MIB, GIB = 1024**2, 1024**3


def test_buffered_parts_are_at_least_8_mib_and_10000_of_them_hold_195_gib() -> None:
    sizes = [part_size(n) for n in range(1, MAX_PARTS + 1)]
    assert sizes[0] == 8 * MIB and min(sizes) >= MIN_PART
    assert sizes == sorted(sizes) and max(sizes) == 32 * MIB  # a buffer fits in 256 MB
    assert sum(sizes) >= 195 * GIB


def test_a_checkpoint_round_trips_and_stays_small() -> None:
    chunks = tuple((f"merging/m-1/{'a' * 16}.{i}.chunk", 123_456) for i in range(100))
    checkpoint = Checkpoint(
        next_index=99_999,
        offset=10 * GIB,
        upload_id="x" * 200,
        part_number=1_280,
        uploaded_bytes=10 * GIB - 5,
        tail="merging/m-1/t.tail",
        chunks=chunks,
        transactions=99_999,
        parts=99_000,
        invocations=40,
        checkpoints=100,
    )
    text = checkpoint.dumps()
    assert Checkpoint.loads(text) == checkpoint
    assert len(text) < 10_000  # on the mission item, far below DynamoDB's 400 KB
    assert Checkpoint.loads(None) == Checkpoint() and Checkpoint().phase == "merging"


def test_an_invocation_stops_a_sixth_of_its_time_early_and_at_most_10_s() -> None:
    left = itertools.count(60, -1)
    budget = _Budget(lambda: float(next(left)))
    assert budget.margin == 10 and budget.total() == 60
    assert budget.left() == 59 - 10
    short = _Budget(lambda: 3.0)  # chalice's local context: 3 s
    assert short.margin == 0.5 and short.left() == 2.5


def test_a_checkpoint_falls_due_every_15_seconds_of_work() -> None:
    clock = iter([60.0, 50.0, 45.0, 44.0, 30.0, 29.0])
    budget = _Budget(lambda: next(clock))
    assert not budget.checkpoint_due()  # 10 s in
    assert budget.checkpoint_due()  # 15 s in
    budget.checkpointed()  # at 44
    assert not budget.checkpoint_due()  # 14 s since
    assert budget.checkpoint_due()  # 15 s since
