"""The store's conditional writes, in-process on moto: each status change is refused unless the
state table allows it, each outcome is counted once, and only the lease holder writes.

No worker processes: claims are driven through `claim_next`, as a worker would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from datetime import datetime, timedelta

import pytest

from chalicelib.capacity import mission_instances
from chalicelib.config import MissionConfig
from chalicelib.context import get_context
from chalicelib.domain import Mission, Transaction, Usage
from chalicelib.layout import FailureMarker, Outcome, PartStamp, part_key
from chalicelib.states import IllegalTransition, MissionStatus, TransactionStatus
from chalicelib.store import Conflict, NotFound, Store
from chalicelib.store.models import MissionModel
from local.inprocess import InProcessCluster
from tests.functional.test_mission import kmer_config, submit
from tests.functional.test_reliability import claim, rows, start

M = MissionStatus
T = TransactionStatus
LEASE = 300
NO_USAGE = Usage(instance_seconds=0.0, estimated_cost=0.0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One embedded AWS for the module (each test works on missions of its own): the stack's
    provisioning is most of a test's time."""
    with InProcessCluster.running(workdir=tmp_path_factory.mktemp("store")) as shared:
        yield shared


def store() -> Store:
    return get_context().store


def running(cluster: InProcessCluster, name: str, count: int = 2, **overrides) -> Mission:
    """A mission planned and RUNNING, its instances launched, nothing claimed yet."""
    mission_id = start(cluster, kmer_config(name, f"{name}.fa", count=count, **overrides))
    found = store().missions.get(mission_id)
    assert found.status is M.RUNNING and found.total == count
    return found


def awaiting(cluster: InProcessCluster, name: str) -> Mission:
    """A mission whose input never came."""
    found = store().missions.get(submit(cluster, kmer_config(name, f"{name}.fa", count=2)))
    assert found.status is M.AWAITING_INPUT
    return found


def txn(mission_id: str, index: int) -> Transaction | None:
    """The transaction's item, read fresh (None if it was never claimed)."""
    found = list(store().transactions.of(mission_id, index, index))
    return found[0] if found else None


def succeeded_by_store(cluster: InProcessCluster, name: str) -> Mission:
    """A mission driven to SUCCEEDED by the store alone: every transaction claimed and counted."""
    m = running(cluster, name)
    for slot in range(m.total):
        claimed = claim(m.mission_id, f"i-w/{slot}", time.time(), LEASE)
        outcome = Outcome(m.mission_id, claimed.index, True, 1)
        assert store().transactions.count_outcome(outcome, part_key(m.mission_id, claimed.index, 1))
    assert store().missions.finish(m, M.SUCCEEDED, None, NO_USAGE, time.time())
    done = store().missions.get(m.mission_id)
    assert done.status is M.SUCCEEDED and done.succeeded == m.total
    return done


def finish_as_worker(t: Transaction, owner: str, status: TransactionStatus, seconds: float):
    store().transactions.finish(
        t,
        owner=owner,
        status=status,
        exit_code=0 if status is T.SUCCEEDED else 1,
        error=None if status is T.SUCCEEDED else "boom",
        run_seconds=seconds,
        part_key=part_key(t.mission_id, t.index, 1) if status is T.SUCCEEDED else None,
        now=time.time(),
    )


# ---- mission status writes refuse what the state table does not allow -----------------------


def test_cancel_of_a_succeeded_mission_is_a_conflict(cluster: InProcessCluster):
    done = succeeded_by_store(cluster, "done")
    instances = cluster.instance_states(done.mission_id)
    with pytest.raises(Conflict):
        store().missions.cancel(done, time.time())
    response = cluster.api.http.delete(f"/missions/{done.mission_id}")
    assert response.status_code == 409
    assert "error" in json.loads(response.body)
    after = store().missions.get(done.mission_id)
    assert after.status is M.SUCCEEDED
    assert after.error is None and after.finished_at == done.finished_at
    assert cluster.instance_states(done.mission_id) == instances  # a refused cancel stops nothing


def test_finish_of_a_mission_awaiting_its_input_is_refused(cluster: InProcessCluster):
    m = awaiting(cluster, "early")
    usage = Usage(instance_seconds=12.0, estimated_cost=0.5)
    for final in (M.SUCCEEDED, M.FAILED):
        finished = store().missions.finish(m, final, "results/x", usage, time.time())
        assert finished is False
    after = store().missions.get(m.mission_id)
    assert after.status is M.AWAITING_INPUT
    assert (after.finished_at, after.result_key, after.instance_seconds) == (None, None, 0.0)
    assert store().missions.awaiting(m.input_key) == m.mission_id  # still bound to its input


def test_begin_planning_of_a_running_mission_returns_none(cluster: InProcessCluster):
    m = running(cluster, "planned")
    assert store().missions.begin_planning(m.mission_id, time.time() + 3600, 360) is None
    after = store().missions.get(m.mission_id)
    assert after.status is M.RUNNING
    assert after.planning_lease_until is None and after.started_at == m.started_at


def test_expire_awaiting_of_a_running_mission_returns_false(cluster: InProcessCluster):
    m = running(cluster, "started")
    assert store().missions.expire_awaiting(m, "input never came", time.time()) is False
    after = store().missions.get(m.mission_id)
    assert (after.status, after.error, after.finished_at) == (M.RUNNING, None, None)
    assert claim(m.mission_id, "i-w/0", time.time(), LEASE) is not None  # still claimable


def test_expire_awaiting_of_an_awaiting_mission_fails_it_and_frees_its_input(
    cluster: InProcessCluster,
):
    m = awaiting(cluster, "never")
    assert store().missions.expire_awaiting(m, "input never came", time.time()) is True
    assert store().missions.expire_awaiting(m, "input never came", time.time()) is False
    after = store().missions.get(m.mission_id)
    assert (after.status, after.error) == (M.FAILED, "input never came")
    assert store().missions.awaiting(m.input_key) is None


def test_time_out_of_a_cancelled_mission_returns_false(cluster: InProcessCluster):
    m = running(cluster, "stopped")
    store().missions.cancel(m, time.time())
    assert store().missions.time_out(m, "timed out", time.time()) is False
    after = store().missions.get(m.mission_id)
    assert (after.status, after.error) == (M.CANCELLED, "cancelled by request")


def test_time_out_of_a_running_mission_happens_once(cluster: InProcessCluster):
    m = running(cluster, "late")
    assert store().missions.time_out(m, "timed out", time.time()) is True
    assert store().missions.time_out(m, "timed out again", time.time()) is False
    after = store().missions.get(m.mission_id)
    assert (after.status, after.error) == (M.FAILED, "timed out")
    assert claim(m.mission_id, "i-w/0", time.time(), LEASE) is None  # no claims once failed


def test_a_move_the_table_never_allows_is_a_programming_error(cluster: InProcessCluster):
    m = running(cluster, "illegal")
    for target in (M.PLANNING, M.AWAITING_INPUT):
        with pytest.raises(IllegalTransition):
            store().missions.finish(m, target, None, NO_USAGE, time.time())
    assert store().missions.get(m.mission_id).status is M.RUNNING


def test_a_running_mission_keeps_its_input_key_until_it_ends(cluster: InProcessCluster):
    """Its workers still read that input: a second config for the key is a 409 until the
    first mission ends (here by a cancel), then it is accepted."""
    first = running(cluster, "reused")
    assert store().missions.awaiting(first.input_key) == first.mission_id
    busy = cluster.submit(kmer_config("again", first.input_key, count=2))
    assert busy.status_code == 409, busy.body
    assert json.loads(busy.body)["mission_id"] == first.mission_id

    response = cluster.api.http.delete(f"/missions/{first.mission_id}")
    assert response.status_code == 200, response.body
    assert store().missions.awaiting(first.input_key) is None
    second_id = submit(cluster, kmer_config("again", first.input_key, count=2))
    assert store().missions.awaiting(first.input_key) == second_id


# ---- counting outcomes ---------------------------------------------------------------------


def test_count_outcome_counts_a_running_transaction_once(cluster: InProcessCluster):
    m = running(cluster, "once")
    t = claim(m.mission_id, "i-w/0", time.time(), LEASE)
    outcome, key = Outcome(m.mission_id, t.index, True, 1), part_key(m.mission_id, t.index, 1)
    assert store().transactions.count_outcome(outcome, key) is True
    assert store().transactions.count_outcome(outcome, key) is False
    after = store().missions.get(m.mission_id)
    assert (after.succeeded, after.failed) == (1, 0)
    counted = txn(m.mission_id, t.index)
    assert (counted.status, counted.part_key, counted.lease_owner) == (T.SUCCEEDED, key, "i-w/0")
    assert counted.lease_expires_at is None


def test_count_outcome_after_the_worker_finished_it(cluster: InProcessCluster):
    """The usual order: the worker records SUCCEEDED, then the part's event is counted."""
    m = running(cluster, "worker first")
    t = claim(m.mission_id, "i-w/0", time.time(), LEASE)
    finish_as_worker(t, "i-w/0", T.SUCCEEDED, 1.5)
    outcome = Outcome(m.mission_id, t.index, True, 1)
    assert store().transactions.count_outcome(outcome, part_key(m.mission_id, t.index, 1)) is True
    assert store().transactions.count_outcome(outcome, part_key(m.mission_id, t.index, 1)) is False
    assert store().missions.get(m.mission_id).succeeded == 1


def test_count_outcome_refuses_a_requeued_transaction(cluster: InProcessCluster):
    """Regression: count_outcome used to move any status to SUCCEEDED. A part written by an
    attempt whose transaction was since requeued must not count (a retry is coming)."""
    m = running(cluster, "requeued")
    t = claim(m.mission_id, "i-w/0", time.time(), LEASE)
    store().transactions.requeue(t, "i-w/0", 1, "attempt 1 failed", time.time())
    assert txn(m.mission_id, t.index).status is T.PENDING

    key = part_key(m.mission_id, t.index, 1)
    assert store().transactions.count_outcome(Outcome(m.mission_id, t.index, True, 1), key) is False
    marker = FailureMarker(error="boom", exit_code=1, attempts=1)
    failed = Outcome(m.mission_id, t.index, False, 1)
    assert store().transactions.count_outcome(failed, key, marker) is False

    after = txn(m.mission_id, t.index)
    assert (after.status, after.part_key, after.attempts) == (T.PENDING, None, 1)
    counters = store().missions.get(m.mission_id)
    assert (counters.succeeded, counters.failed) == (0, 0)
    # ... and the retry is still there to be claimed, and then counted.
    retried = claim(m.mission_id, "i-w/1", time.time(), LEASE)
    assert retried is not None  # index 1, from the cursor
    retried = claim(m.mission_id, "i-w/1", time.time(), LEASE)
    assert (retried.index, retried.attempts, retried.claim) == (t.index, 2, 2)
    # The first claim's part, arriving now, is stale: the second claim holds the transaction.
    assert store().transactions.count_outcome(Outcome(m.mission_id, t.index, True, 1), key) is False
    second = part_key(m.mission_id, t.index, 2)
    assert store().transactions.count_outcome(Outcome(m.mission_id, t.index, True, 2), second)
    assert store().missions.get(m.mission_id).succeeded == 1
    assert txn(m.mission_id, t.index).part_key == second  # what the merge reads


def test_count_outcome_refuses_a_transaction_taken_back_by_the_sweeper(
    cluster: InProcessCluster,
):
    m = running(cluster, "taken back")
    t = claim(m.mission_id, "i-lost/0", time.time() - 600, 1)  # its lease long expired
    assert store().transactions.take_back_expired(t, time.time(), "expired", requeue=True)
    assert txn(m.mission_id, t.index).status is T.PENDING

    key = part_key(m.mission_id, t.index, 1)
    assert store().transactions.count_outcome(Outcome(m.mission_id, t.index, True, 1), key) is False
    after = txn(m.mission_id, t.index)
    assert (after.status, after.part_key) == (T.PENDING, None)
    counters = store().missions.get(m.mission_id)
    assert (counters.succeeded, counters.failed) == (0, 0)


def test_a_dropped_lease_still_counts_its_failure_marker(cluster: InProcessCluster):
    """Out of attempts: the sweeper drops the lease (the transaction stays RUNNING) and its
    failure marker is counted from there."""
    m = running(cluster, "dropped", max_attempts=1)
    t = claim(m.mission_id, "i-lost/0", time.time() - 600, 1)
    assert store().transactions.take_back_expired(t, time.time(), "expired", requeue=False)
    marker = FailureMarker(error="expired: worker lost", attempts=1, timed_out=True)
    failed = Outcome(m.mission_id, t.index, False, 1)
    assert store().transactions.count_outcome(failed, "x.failed", marker) is True
    assert store().transactions.count_outcome(failed, "x.failed", marker) is False
    after = txn(m.mission_id, t.index)
    assert (after.status, after.error) == (T.FAILED, "expired: worker lost")
    assert store().missions.get(m.mission_id).failed == 1


def test_count_outcome_refuses_the_other_outcome_of_a_finished_transaction(
    cluster: InProcessCluster,
):
    m = running(cluster, "other outcome")
    t = claim(m.mission_id, "i-w/0", time.time(), LEASE)
    finish_as_worker(t, "i-w/0", T.FAILED, 1.0)  # the worker says FAILED, not yet counted
    key = part_key(m.mission_id, t.index, 1)
    assert store().transactions.count_outcome(Outcome(m.mission_id, t.index, True, 1), key) is False
    assert txn(m.mission_id, t.index).status is T.FAILED
    assert store().missions.get(m.mission_id).succeeded == 0


def test_count_outcome_without_a_claim_or_a_running_mission_writes_nothing(
    cluster: InProcessCluster,
):
    m = running(cluster, "unclaimed")
    key = part_key(m.mission_id, 1, 1)
    assert store().transactions.count_outcome(Outcome(m.mission_id, 1, True, 1), key) is False
    assert txn(m.mission_id, 1) is None  # no item made up for a never-claimed transaction

    t = claim(m.mission_id, "i-w/0", time.time(), LEASE)
    store().missions.cancel(m, time.time())
    key = part_key(m.mission_id, t.index, 1)
    assert store().transactions.count_outcome(Outcome(m.mission_id, t.index, True, 1), key) is False
    assert txn(m.mission_id, t.index).status is T.RUNNING  # all or nothing
    assert store().missions.get(m.mission_id).succeeded == 0


def test_finish_by_a_worker_that_lost_its_lease_records_nothing(cluster: InProcessCluster):
    m = running(cluster, "lost lease", count=1)
    old = claim(m.mission_id, "i-old/0", time.time() - 600, 1)
    assert store().transactions.take_back_expired(old, time.time(), "expired", requeue=True)

    finish_as_worker(old, "i-old/0", T.SUCCEEDED, 9.0)  # requeued, not yet claimed again
    with pytest.raises(Conflict):
        store().transactions.requeue(old, "i-old/0", 1, "late", time.time())
    pending = txn(m.mission_id, old.index)
    assert (pending.status, pending.run_seconds, pending.finished_at) == (T.PENDING, None, None)
    assert (pending.attempts, pending.exit_code) == (1, None)

    new = claim(m.mission_id, "i-new/0", time.time(), LEASE)
    assert (new.index, new.attempts) == (old.index, 2)
    for status in (T.SUCCEEDED, T.FAILED):
        finish_as_worker(old, "i-old/0", status, 9.0)
    held = txn(m.mission_id, old.index)
    assert (held.status, held.lease_owner, held.run_seconds) == (T.RUNNING, "i-new/0", None)
    assert held.exit_code is None and held.part_key is None

    finish_as_worker(new, "i-new/0", T.SUCCEEDED, 2.0)  # the holder's own finish lands
    done = txn(m.mission_id, old.index)
    assert (done.status, done.run_seconds, done.exit_code) == (T.SUCCEEDED, 2.0, 0)


def test_finish_after_result_processor_counted_still_records_run_seconds(
    cluster: InProcessCluster,
):
    m = running(cluster, "counted first")
    t = claim(m.mission_id, "i-w/0", time.time(), LEASE)
    key = part_key(m.mission_id, t.index, 1)
    assert store().transactions.count_outcome(Outcome(m.mission_id, t.index, True, 1), key)
    assert txn(m.mission_id, t.index).run_seconds is None

    finish_as_worker(t, "i-w/0", T.SUCCEEDED, 2.5)
    after = txn(m.mission_id, t.index)
    assert (after.status, after.run_seconds, after.exit_code) == (T.SUCCEEDED, 2.5, 0)
    assert after.finished_at is not None and after.part_key == key
    assert store().missions.get(m.mission_id).succeeded == 1  # counted once, still
    assert store().transactions.count_outcome(Outcome(m.mission_id, t.index, True, 1), key) is False


def test_finish_with_another_status_than_the_counted_one_records_nothing(
    cluster: InProcessCluster,
):
    m = running(cluster, "disagree")
    t = claim(m.mission_id, "i-w/0", time.time(), LEASE)
    key = part_key(m.mission_id, t.index, 1)
    assert store().transactions.count_outcome(Outcome(m.mission_id, t.index, True, 1), key)
    finish_as_worker(t, "i-w/0", T.FAILED, 3.0)
    after = txn(m.mission_id, t.index)
    assert (after.status, after.run_seconds, after.error) == (T.SUCCEEDED, None, None)


def test_hand_back_spends_no_attempt(cluster: InProcessCluster):
    m = running(cluster, "handed", count=1)
    t = claim(m.mission_id, "i-a/0", time.time(), LEASE)
    assert t.attempts == 1
    store().transactions.hand_back(t, "i-a/0", time.time(), "handed back: Spot interruption")
    back = txn(m.mission_id, t.index)
    assert (back.status, back.attempts, back.lease_owner) == (T.PENDING, 0, None)
    assert back.error == "handed back: Spot interruption"
    again = claim(m.mission_id, "i-b/0", time.time(), LEASE)
    assert (again.index, again.attempts, again.lease_owner) == (t.index, 1, "i-b/0")

    # A requeue, by contrast, spends the attempt.
    store().transactions.requeue(again, "i-b/0", 2, "exit 2", time.time())
    back = txn(m.mission_id, t.index)
    assert (back.status, back.attempts, back.exit_code, back.error) == (T.PENDING, 1, 2, "exit 2")
    assert claim(m.mission_id, "i-c/0", time.time(), LEASE).attempts == 2


def test_writes_by_a_worker_that_does_not_hold_the_lease_are_refused(
    cluster: InProcessCluster,
):
    m = running(cluster, "not mine")
    t = claim(m.mission_id, "i-a/0", time.time(), LEASE)
    with pytest.raises(Conflict):
        store().transactions.requeue(t, "i-b/0", 1, "not mine", time.time())
    with pytest.raises(Conflict):
        store().transactions.hand_back(t, "i-b/0", time.time(), "not mine")
    assert store().transactions.extend_lease(t, "i-b/0", time.time(), LEASE) is False
    held = txn(m.mission_id, t.index)
    assert (held.status, held.lease_owner, held.attempts, held.error) == (
        T.RUNNING,
        "i-a/0",
        1,
        None,
    )
    assert held.lease_expires_at == t.lease_expires_at
    # The sweeper spares a lease still alive, however it is asked.
    for requeue in (True, False):
        assert store().transactions.take_back_expired(t, time.time(), "x", requeue) is False
    assert txn(m.mission_id, t.index).lease_owner == "i-a/0"
    assert store().transactions.extend_lease(t, "i-a/0", time.time(), LEASE) is True


def _is_utc(moment: datetime | None) -> bool:
    return moment is not None and moment.utcoffset() == timedelta(0)


def test_the_store_hands_out_typed_missions(cluster: InProcessCluster):
    m = running(cluster, "typed", count=3)
    t = claim(m.mission_id, "i-w/0", time.time(), LEASE)
    store().transactions.count_outcome(
        Outcome(m.mission_id, t.index, True, 1), part_key(m.mission_id, t.index, 1)
    )
    store().missions.add_instance_usage(m.mission_id, "i-typed", Usage(12.5, 0.25))

    got = store().missions.get(m.mission_id)
    assert type(got) is Mission
    assert type(got.status) is MissionStatus and got.status is M.RUNNING
    assert type(got.config) is MissionConfig and got.config.split.count == 3
    for number in (got.total, got.succeeded, got.failed, got.handed_out, got.instances):
        assert type(number) is int
    assert (got.total, got.succeeded, got.handed_out) == (3, 1, 1)
    assert type(got.instance_seconds) is float and got.instance_seconds == 12.5
    assert type(got.estimated_cost) is float and got.estimated_cost == 0.25
    assert type(got.input_bytes) is int
    assert _is_utc(got.created_at) and _is_utc(got.started_at) and _is_utc(got.running_at)
    assert got.created_at <= got.started_at <= got.running_at
    assert got.plan.count == 3 and got.plan.slice(0).start == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.status = M.FAILED  # type: ignore[misc]


def test_the_store_hands_out_typed_transactions(cluster: InProcessCluster):
    m = running(cluster, "typed txns", count=3)
    first = claim(m.mission_id, "i-w/0", time.time(), LEASE)
    second = claim(m.mission_id, "i-w/1", time.time(), LEASE)
    finish_as_worker(second, "i-w/1", T.SUCCEEDED, 0.75)

    listed = list(store().transactions.of(m.mission_id))
    assert [t.index for t in listed] == [first.index, second.index] == [0, 1]  # never-claimed: none
    for t in listed:
        assert type(t) is Transaction and t.mission_id == m.mission_id
        assert type(t.status) is TransactionStatus
        for number in (t.index, t.attempts, t.start, t.end):
            assert type(number) is int
        assert _is_utc(t.started_at)
    running_one, finished = listed
    assert running_one.status is T.RUNNING and type(running_one.lease_expires_at) is float
    assert finished.status is T.SUCCEEDED and type(finished.exit_code) is int
    assert type(finished.run_seconds) is float and _is_utc(finished.finished_at)
    assert [(t.start, t.end) for t in listed] == [
        (m.plan.slice(i).start, m.plan.slice(i).end) for i in (0, 1)
    ]
    # The API shows the never-claimed one from the plan.
    assert [r["status"] for r in rows(cluster, m.mission_id)] == ["RUNNING", "SUCCEEDED", "PENDING"]


def test_an_unknown_mission_is_not_found(cluster: InProcessCluster):
    with pytest.raises(NotFound):
        store().missions.get("m-nope")
    assert cluster.get("/missions/m-nope").status_code == 404
    assert list(store().transactions.of("m-nope")) == []


def test_finish_adds_its_usage_to_what_workers_reported_meanwhile(cluster):
    """A worker's usage report that lands while the mission settles (after the mission was
    read, before it is finished: a merge can take minutes) is kept, not overwritten."""
    m = running(cluster, "usage race")
    read = store().missions.get(m.mission_id)  # what the settling invocation read
    exits = Usage(instance_seconds=40.0, estimated_cost=0.01)
    assert store().missions.add_instance_usage(m.mission_id, "i-exits", exits)
    reduce_stage = Usage(instance_seconds=5.0, estimated_cost=0.002)
    assert store().missions.finish(read, M.SUCCEEDED, None, reduce_stage, time.time())
    after = store().missions.get(m.mission_id)
    assert after.instance_seconds == pytest.approx(read.instance_seconds + 45.0)
    assert after.estimated_cost == pytest.approx(read.estimated_cost + 0.012)
    late = Usage(instance_seconds=7.0, estimated_cost=0.01)
    assert not store().missions.add_instance_usage(m.mission_id, "i-late", late)  # final now


def test_each_instance_is_accounted_once_whoever_comes_first(cluster):
    """Its agent's report, or the control side's count by its age: the first one counts, the
    other is refused, in either order, and a repeated report (after a lost reply) too."""
    m = running(cluster, "usage once")
    missions, before = store().missions, store().missions.get(m.mission_id).instance_seconds
    agent, age = Usage(10.0, 0.001), Usage(11.0, 0.0011)
    assert missions.add_instance_usage(m.mission_id, "i-agent-first", agent)
    assert not missions.add_instance_usage(m.mission_id, "i-agent-first", agent)  # a repeat
    counted = missions.account_by_age(
        m.mission_id, {"i-agent-first": age, "i-alive": age}, while_in=[M.RUNNING]
    )
    assert counted == {"i-alive": age}  # the agent's report stands; the other by its age
    assert not missions.add_instance_usage(m.mission_id, "i-alive", agent)  # too late for it
    assert missions.accounted(m.mission_id, ["i-agent-first", "i-alive", "i-other"]) == {
        "i-agent-first",
        "i-alive",
    }
    assert missions.get(m.mission_id).instance_seconds == pytest.approx(before + 21.0)
    # Not while the mission is in another status: nothing is added, nothing marked accounted.
    assert missions.account_by_age(m.mission_id, {"i-late": age}, while_in=[M.SUCCEEDED]) == {}
    assert missions.accounted(m.mission_id, ["i-late"]) == set()
    assert missions.get(m.mission_id).instance_seconds == pytest.approx(before + 21.0)


def test_many_instances_are_accounted_in_transactions_of_at_most_100_items(cluster):
    """250 instances (three TransactWriteItems), some reported by their agents first: the
    transaction holding one of those is written again without it."""
    m = running(cluster, "usage many")
    missions, before = store().missions, store().missions.get(m.mission_id).instance_seconds
    ids = [f"i-{n:04d}" for n in range(250)]
    for reported in (ids[5], ids[150], ids[151]):
        assert missions.add_instance_usage(m.mission_id, reported, Usage(100.0, 0.01))
    ages = {i: Usage(1.0, 0.0001) for i in ids}
    counted = missions.account_by_age(m.mission_id, ages, while_in=[M.RUNNING])
    assert set(counted) == set(ids) - {ids[5], ids[150], ids[151]}
    assert missions.accounted(m.mission_id, ids) == set(ids)
    after = missions.get(m.mission_id)
    assert after.instance_seconds == pytest.approx(before + 300.0 + 247.0)
    # The usage items are not missions: no listing, index or sweep sees them.
    assert m.mission_id in {x.mission_id for x in missions.newest(50)}
    assert not [x for x in missions.newest(1000) if "/" in x.mission_id]
    assert not [x for x in missions.needing_care() if "/" in x]


def test_an_instance_that_reported_and_still_shows_running_is_not_counted_again(cluster):
    """The last workers report, then terminate their instances; at the mission's end one may
    still show as running (DescribeInstances is eventually consistent). The end counts the
    instances still alive by their age, except one whose agent reported it: once each."""
    one_slot = {"types": ["c5.large"], "max_instances": 3, "slots": 1}
    m = running(cluster, "reported, still running", count=3, instances=one_slot)
    ec2, bucket = get_context().aws.ec2, cluster.stack.outputs["ResultBucketName"]
    alive = mission_instances(ec2, m.mission_id, ["pending", "running"])
    assert len(alive) >= 2
    reported, others = alive[0], alive[1:]
    report = Usage(instance_seconds=1000.0, estimated_cost=1.0)  # its agent's, at its exit
    assert store().missions.add_instance_usage(m.mission_id, reported["InstanceId"], report)
    time.sleep(1.0)  # every instance is a second old at least: a second count would show
    before = store().missions.get(m.mission_id).instance_seconds
    for t in [claim(m.mission_id, f"i-w/{slot}", time.time(), LEASE) for slot in (0, 1, 2)]:
        stamp = PartStamp(hashlib.sha256(b"x").hexdigest(), 0, 0.1).upload_args()
        key = part_key(m.mission_id, t.index, 1)
        cluster.s3.put_object(Bucket=bucket, Key=key, Body=b"x", Metadata=stamp["Metadata"])
    cluster.deliver_result_events()
    ended = store().missions.get(m.mission_id)
    assert ended.status is M.SUCCEEDED
    ages = [time.time() - i["LaunchTime"].timestamp() for i in others]
    added = ended.instance_seconds - before
    assert 0 < added <= sum(ages)  # the others by their age; the reported one not again
    assert sum(ages) - added < min(ages)  # and every other one: none was left out
    assert store().missions.accounted(m.mission_id, [i["InstanceId"] for i in alive]) == {
        i["InstanceId"] for i in alive
    }


def test_a_client_hook_installed_after_the_store_is_built_sees_its_calls(cluster):
    """The store's pynamodb clients are built on first use (from the process's one session), so
    the hooks that count and check AWS calls (the IAM-in-use check, the call counters, the
    injected faults) see every store call made after they were installed."""
    from chalicelib.context import reset_process_state
    from local.inprocess import ApiCallCounter

    reset_process_state()
    built = get_context()
    unknown = "m-20200101000000-00000000"
    with ApiCallCounter().installed() as counter:
        with pytest.raises(NotFound):
            built.store.missions.get(unknown)
        assert list(built.store.transactions.of(unknown)) == []
        with built.store.missions._atomic() as tx:  # the store's own TransactWriteItems
            tx.condition_check(
                MissionModel, unknown, condition=MissionModel.mission_id.does_not_exist()
            )
    assert {"dynamodb.GetItem", "dynamodb.Query", "dynamodb.TransactWriteItems"} <= set(
        counter.calls
    )
