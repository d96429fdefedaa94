"""The dashboard's reads (chalicelib.dashboard) without AWS or a browser: block items (`span`),
never-claimed indexes, bounds per call, buckets, marks and ownership."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from chalicelib import dashboard
from chalicelib.auth import Caller
from chalicelib.domain import Transaction
from chalicelib.states import MissionStatus, TransactionStatus
from chalicelib.store import NotFound

T = TransactionStatus
MISSION_ID = "m-20260101000000-0badcafe"


@dataclass(frozen=True)
class Block(Transaction):
    """A transaction item as the store's blocks make it: one item for `span` indexes."""

    span: int = 1


@dataclass
class FakeTransactions:
    items: list[Transaction]
    reads: list[tuple[int, int]] = field(default_factory=list)

    def of(self, mission_id: str, first: int, last: int):
        self.reads.append((first, last))
        return [t for t in self.items if first <= t.index <= last]

    def covering(self, mission_id: str, first: int, last: int):
        """As the store's: the keyed items, and the block before that reaches into the range."""
        self.reads.append((first, last))
        return [t for t in self.items if t.index <= last and t.index + t.span - 1 >= first]


def item(index: int, status: T, span: int = 1, **extra) -> Transaction:
    return Block(MISSION_ID, index, status, start=index, end=index + span, span=span, **extra)


def context(total: int, items: list[Transaction], status=MissionStatus.RUNNING):
    mission = SimpleNamespace(
        mission_id=MISSION_ID,
        status=status,
        total=total,
        handed_out=max((t.index + getattr(t, "span", 1) for t in items), default=0),
        submitted_by="arn:aws:iam::1:user/alice",
        succeeded=sum(getattr(t, "span", 1) for t in items if t.status is T.SUCCEEDED),
        failed=sum(getattr(t, "span", 1) for t in items if t.status is T.FAILED),
        counted=0,
        waiting=0,
        remaining=0,
    )
    transactions = FakeTransactions(items)
    missions = SimpleNamespace(get=lambda mission_id: mission)
    store = SimpleNamespace(missions=missions, transactions=transactions)
    return SimpleNamespace(store=store, clock=lambda: 1_700_000_000.0), transactions


ALICE = Caller("arn:aws:iam::1:user/alice")


@pytest.fixture(autouse=True)
def counts_from_the_fake(monkeypatch):
    monkeypatch.setattr(dashboard, "transaction_counts", lambda mission: {"total": mission.total})


def test_a_block_colours_every_index_it_covers_and_unclaimed_ones_are_pending():
    items = [
        item(0, T.SUCCEEDED, span=4),
        item(4, T.FAILED, exit_code=3, error="x" * 1000, attempts=2),
        item(5, T.RUNNING, span=2),
        item(7, T.PENDING, attempts=1, error="lease of i-0abc/1 expired: worker lost"),
    ]
    ctx, _ = context(12, items)
    answer = dashboard.transaction_map(ctx, MISSION_ID, ALICE)
    assert answer["statuses"] == "SSSSFRRWPPPP"
    assert answer["per_cell"] == 1 and answer["next_first"] is None
    (failure,) = answer["failures"]
    assert failure["index"] == 4 and failure["exit_code"] == 3
    assert len(failure["error_tail"]) == dashboard.ERROR_TAIL_CHARS


def test_a_map_call_is_bounded_and_continues():
    ctx, reads = context(25_000, [item(0, T.SUCCEEDED, span=25_000)])
    answer = dashboard.transaction_map(ctx, MISSION_ID, ALICE, first=0)
    assert len(answer["statuses"]) == dashboard.MAP_RANGE_LIMIT
    assert answer["next_first"] == dashboard.MAP_RANGE_LIMIT
    assert reads.reads == [(0, dashboard.MAP_RANGE_LIMIT - 1)]
    # Buckets: counts per status over equal parts of the range.
    answer = dashboard.transaction_map(ctx, MISSION_ID, ALICE, first=0, last=9, cells=2)
    assert answer["per_cell"] == 5 and answer["buckets"]["S"] == [5, 5]


def test_a_cancelled_missions_unclaimed_transactions_are_cancelled():
    ctx, _ = context(3, [item(0, T.SUCCEEDED, counted=True)], status=MissionStatus.CANCELLED)
    assert dashboard.transaction_map(ctx, MISSION_ID, ALICE)["statuses"] == "SCC"


def test_the_timeline_puts_attempts_on_instances_and_marks_lost_workers():
    started = datetime(2026, 1, 1, tzinfo=UTC)
    items = [
        item(0, T.SUCCEEDED, lease_owner="i-0aaa/0", started_at=started, finished_at=started),
        item(1, T.RUNNING, lease_owner="i-0bbb/1", started_at=started),
        item(2, T.PENDING, attempts=1, error="lease of i-0ccc/0 expired: worker lost"),
        item(3, T.PENDING, error="handed back: Spot interruption of i-0ddd"),
    ]
    ctx, reads = context(5, items)
    ctx.aws = SimpleNamespace(ec2=None)
    answer = dashboard.timeline(ctx, MISSION_ID, ALICE, after=0, limit=5000)
    assert [a["instance"] for a in answer["attempts"]] == ["i-0bbb"]
    assert answer["attempts"][0]["finished_at"] is None
    assert [(m["kind"], m["instance"]) for m in answer["marks"]] == [
        ("lost", "i-0ccc"),
        ("spot", "i-0ddd"),
    ]
    assert answer["instances"] is None  # on the first page only
    assert reads.reads == [(1, 4)]


def test_another_callers_mission_is_not_found():
    ctx, reads = context(3, [])
    with pytest.raises(NotFound):
        dashboard.transaction_map(ctx, MISSION_ID, Caller("arn:aws:iam::1:user/bob"))
    with pytest.raises(NotFound):
        dashboard.timeline(ctx, "not-a-mission-id", ALICE)
    assert reads.reads == []
