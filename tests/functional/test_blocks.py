"""Claims in blocks, in-process on moto: many short transactions per claim, per lease, per part
and per count, without changing what a user sees (index order, per-transaction status, a failed
transaction retried alone)."""

from __future__ import annotations

import itertools
import time

from chalicelib.context import get_context
from chalicelib.layout import part_key
from chalicelib.states import TransactionStatus
from chalicelib.sweeper import sweep
from local.inprocess import InProcessCluster
from tests.functional.test_mission import kmer_config
from tests.functional.test_reliability import mission, rows, start

T = TransactionStatus

# Writes "index attempt" and fails where told: {index} {attempt} and a rule, all in the argv.
ECHO = (
    "import sys; out, index, attempt, bad, fails = sys.argv[1], *map(int, sys.argv[2:6]);"
    "open(out, 'w').write(f'{index} {attempt}\\n');"
    "sys.exit(3 if index == bad and attempt <= fails else 0)"
)


def echo_config(name: str, count: int, bad: int = -1, fails: int = 0, **overrides) -> dict:
    argv = ["{python}", "-c", ECHO, "{output}", "{index}", "{attempt}", str(bad), str(fails)]
    config = kmer_config(name, f"{name}.fa", count=count, app={"argv": argv}, **overrides)
    config["instances"] = {"types": ["c5.large"], "max_instances": 1, "slots": 2}
    return config


def items(mission_id: str):
    return list(get_context().store.transactions.of(mission_id))


def lines(cluster: InProcessCluster, mission_id: str) -> list[str]:
    return cluster.result(mission(cluster, mission_id)["result"]).decode().splitlines()


def test_short_transactions_are_claimed_counted_and_stored_in_blocks(cluster):
    mission_id = start(cluster, echo_config("packed", count=60))
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    body = mission(cluster, mission_id)
    assert body["status"] == "SUCCEEDED", body
    assert body["transactions"]["SUCCEEDED"] == 60
    # The worker's first claim is one transaction (no pace seen yet); its other slot waited
    # for that pace rather than claiming a block of one too; then blocks.
    blocks = items(mission_id)
    assert len(blocks) < 20 and max(b.span for b in blocks) > 1
    assert [b.span for b in blocks].count(1) == 1, [(b.index, b.span) for b in blocks]
    assert sum(b.span for b in blocks) == 60
    spans = sorted((b.index, b.last) for b in blocks)
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(spans)), spans  # no gap, no overlap
    # What the user sees is per transaction, in index order, as with one per claim.
    shown = rows(cluster, mission_id)
    assert [t["index"] for t in shown] == list(range(60))
    assert {(t["status"], t["attempts"]) for t in shown} == {("SUCCEEDED", 1)}
    assert lines(cluster, mission_id) == [f"{i} 1" for i in range(60)]
    # One part per block, named by its first and last index.
    bucket = get_context().settings.result_bucket
    keys = {
        o["Key"]
        for o in cluster.s3.list_objects_v2(Bucket=bucket, Prefix=f"parts/{mission_id}/")[
            "Contents"
        ]
    }
    assert keys == {part_key(mission_id, b.index, b.claim, b.span) for b in blocks}
    assert len(cluster.emails()) == 1


def test_a_failed_transaction_in_a_block_is_retried_alone(cluster):
    """Transaction 30 fails on its first attempt, inside a block: what ran before it is kept,
    it alone is attempted again (first in the block sent back), and nothing after it ran
    twice."""
    mission_id = start(cluster, echo_config("one bad", count=60, bad=30, fails=1, max_attempts=3))
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    body = mission(cluster, mission_id)
    assert body["status"] == "SUCCEEDED", body
    assert lines(cluster, mission_id) == [f"{i} {2 if i == 30 else 1}" for i in range(60)]
    shown = rows(cluster, mission_id)
    assert [(t["index"], t["attempts"]) for t in shown if t["attempts"] != 1] == [(30, 2)]
    [retried] = [b for b in items(mission_id) if b.index <= 30 <= b.last]
    assert retried.index == 30  # the block was cut at the failure
    assert get_context().store.missions.get(mission_id).requeued >= 1


def test_a_transaction_failing_for_good_fails_alone_and_the_rest_of_its_block_runs(cluster):
    mission_id = start(cluster, echo_config("for good", count=60, bad=30, fails=9, max_attempts=2))
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    body = mission(cluster, mission_id)
    assert body["status"] == "FAILED", body
    assert (body["transactions"]["SUCCEEDED"], body["transactions"]["FAILED"]) == (59, 1)
    shown = rows(cluster, mission_id)
    assert [(t["index"], t["status"], t["attempts"], t["exit_code"]) for t in shown][30] == (
        30,
        "FAILED",
        2,
        3,
    )
    assert all(t["status"] == "SUCCEEDED" for t in shown if t["index"] != 30)
    [failed] = [b for b in items(mission_id) if b.status is T.FAILED]
    assert (failed.index, failed.span) == (30, 1)
    [email] = cluster.emails()
    assert "1 failed" in email.body or "Failed: 1" in email.body or "#30" in email.body


def test_a_lost_block_is_cut_in_two_without_spending_an_attempt(cluster):
    mission_id = start(cluster, echo_config("lost block", count=40))
    store = get_context().store
    lost = store.transactions.claim_next(
        store.missions.get(mission_id), "i-dead/0", time.time() - 600, 1, want=10
    )
    assert (lost.index, lost.span, lost.attempts) == (0, 10, 1)
    assert mission(cluster, mission_id)["transactions"]["RUNNING"] == 10

    report = sweep(get_context())
    assert report.requeued == 10
    halves = [(b.index, b.span, b.status, b.attempts) for b in items(mission_id)]
    assert halves == [(0, 5, T.PENDING, 0), (5, 5, T.PENDING, 0)]
    counts = mission(cluster, mission_id)["transactions"]
    assert (counts["PENDING"], counts["RUNNING"]) == (40, 0)

    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    assert mission(cluster, mission_id)["status"] == "SUCCEEDED"
    assert lines(cluster, mission_id) == [f"{i} 1" for i in range(40)]


def test_a_block_lost_between_cursor_and_item_is_requeued_as_one_block(cluster):
    mission_id = start(cluster, echo_config("lost run", count=30))
    store = get_context().store
    first = store.transactions._advance_cursor(mission_id, 12)  # a claim that never landed
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    assert mission(cluster, mission_id)["transactions"]["RUNNING"] == 12
    report = sweep(get_context())
    assert report.requeued == 12
    [requeued] = [b for b in items(mission_id) if b.index == first]
    assert (requeued.span, requeued.status) == (12, T.PENDING)
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    assert mission(cluster, mission_id)["status"] == "SUCCEEDED"
    assert lines(cluster, mission_id) == [f"{i} 1" for i in range(30)]
