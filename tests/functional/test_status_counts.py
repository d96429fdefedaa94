"""GET /missions/{id} counts transactions per status from the mission item alone: one read at
any size, and the same counts a read of every transaction item gives, through claims, retries,
hand-backs, a lost claim taken back by the sweeper, and the counting of outcomes."""

from __future__ import annotations

import json
import time
from collections import Counter

from chalicelib.context import get_context, reset_process_state
from chalicelib.states import TransactionStatus
from chalicelib.sweeper import sweep
from local.inprocess import ApiCallCounter, InProcessCluster
from tests.functional.test_mission import kmer_config
from tests.functional.test_reliability import claim, start

T = TransactionStatus
LEASE = 90


def counted_from_items(mission_id: str) -> dict[str, int]:
    """The old way, reading every item: what the O(1) counts must equal. An outcome recorded
    by its worker but not yet counted is still RUNNING for the mission."""
    ctx = get_context()
    mission = ctx.store.missions.get(mission_id)
    counts: Counter[str] = Counter()
    for t in ctx.store.transactions.of(mission_id):
        finished = t.status in (T.SUCCEEDED, T.FAILED)
        counts[T.RUNNING.value if finished and not t.counted else t.status.value] += t.span
    counts[T.PENDING.value] += mission.total - sum(counts.values())
    return {s.value: counts.get(s.value, 0) for s in T} | {"total": mission.total}


def shown(cluster: InProcessCluster, mission_id: str, counter: ApiCallCounter) -> dict:
    counter.reset()
    response = cluster.get(f"/missions/{mission_id}")
    assert response.status_code == 200, response.body
    assert counter.calls == ["dynamodb.GetItem"], counter.calls  # the mission item, nothing else
    counts = json.loads(response.body)["transactions"]
    assert counts == counted_from_items(mission_id)
    return counts


def test_counts_need_one_read_and_match_the_items_through_retries(cluster: InProcessCluster):
    mission_id = start(cluster, kmer_config("counts", "counts.fa", count=6, max_attempts=3))
    now = time.time()
    counter = ApiCallCounter()
    with counter.installed():
        reset_process_state()  # clients made after the hook is installed are counted
        store = get_context().store
        assert shown(cluster, mission_id, counter)["PENDING"] == 6

        a, b, c = (claim(mission_id, f"i-1/{n}", now, LEASE) for n in range(3))
        assert shown(cluster, mission_id, counter)["RUNNING"] == 3
        store.transactions.requeue(a, "i-1/0", 1, "exit 1", now)
        store.transactions.hand_back(b, "i-1/1", now, "Spot interruption")
        counts = shown(cluster, mission_id, counter)
        assert (counts["PENDING"], counts["RUNNING"]) == (5, 1)

        # The cursor's three, then the two retries (one of them with a lease already expired,
        # as if its worker died at once); nothing is left to claim.
        held = [claim(mission_id, f"i-2/{n}", now, LEASE) for n in range(4)]
        lost = claim(mission_id, "i-2/4", now - 600, 1)
        assert all(held) and lost is not None
        assert claim(mission_id, "i-2/5", now, LEASE) is None
        assert shown(cluster, mission_id, counter)["RUNNING"] == 6

        sweep(get_context())  # takes the lost one back: PENDING again
        counts = shown(cluster, mission_id, counter)
        assert (counts["PENDING"], counts["RUNNING"]) == (1, 5)

        # Every held claim handed back, then real workers run it all: counted outcomes only.
        for txn in [c, *held]:
            store.transactions.hand_back(txn, txn.lease_owner, now, "test: give it back")
        assert shown(cluster, mission_id, counter)["PENDING"] == 6
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    with counter.installed():
        reset_process_state()
        counts = shown(cluster, mission_id, counter)
    assert counts["SUCCEEDED"] == 6 and counts["PENDING"] == counts["RUNNING"] == 0
