"""The sweeper's repairs (issue 11): isolated per mission, a deadline for every live state,
complete missions settled, lost counts recounted, a lease taken back before its failure is
reported, and relaunches that never exceed the mission's cap."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime

from chalicelib import sweeper
from chalicelib.capacity import mission_instances
from chalicelib.context import get_context
from chalicelib.layout import Outcome, failure_key, part_key
from chalicelib.store.models import MissionModel, TransactionModel
from local.inprocess import InProcessCluster
from tests.functional.test_mission import kmer_config, submit
from tests.functional.test_reliability import claim, mission, rows, start

LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def later(seconds: float):
    return dataclasses.replace(get_context(), clock=lambda: time.time() + seconds)


def live_instances(cluster: InProcessCluster, mission_id: str) -> list[str]:
    return [i for i, state in cluster.instance_states(mission_id).items() if state == "running"]


def test_one_failing_mission_does_not_stop_the_sweep(cluster: InProcessCluster, monkeypatch):
    broken = start(cluster, kmer_config("broken", "broken.fa", count=2))
    never = submit(cluster, kmer_config("never", "never.fa", timeouts={"mission_seconds": 60}))
    care = sweeper._care_for_running

    def failing(ctx, m, report):
        if m.mission_id == broken:
            raise RuntimeError("S3 is having a bad day")
        care(ctx, m, report)

    monkeypatch.setattr(sweeper, "_care_for_running", failing)
    report = sweeper.sweep(later(3600))
    assert report.timed_out == [never]  # the newer mission was still cared for
    assert broken in report.errors and "bad day" in report.errors[broken]
    assert mission(cluster, never)["status"] == "FAILED"


def test_an_unreadable_mission_does_not_stop_the_sweep(cluster: InProcessCluster):
    unreadable = submit(cluster, kmer_config("unreadable", "u.fa"))
    MissionModel(unreadable).update(actions=[MissionModel.config_json.set("{not json")])
    never = submit(cluster, kmer_config("never", "never.fa", timeouts={"mission_seconds": 60}))
    report = sweeper.sweep(later(3600))
    assert report.timed_out == [never]
    assert unreadable in report.errors


def test_a_mission_stuck_planning_fails_at_its_deadline(cluster: InProcessCluster):
    stuck = submit(cluster, kmer_config("stuck", "stuck.fa"))
    MissionModel(stuck).update(
        actions=[
            MissionModel.status.set("PLANNING"),
            MissionModel.planning_lease_until.set(time.time() - 1),
            MissionModel.started_at.set(LONG_AGO),
        ]
    )
    report = sweeper.sweep(later(60))
    assert report.timed_out == [stuck]
    done = mission(cluster, stuck)
    assert done["status"] == "FAILED" and "planning did not finish" in done["error"]
    emails = cluster.emails()
    assert len(emails) == 1 and "planning did not finish" in emails[0].body
    # Its input key is free again.
    assert get_context().store.missions.awaiting("stuck.fa") is None


def test_a_mission_still_planning_under_a_live_lease_is_left_alone(cluster: InProcessCluster):
    busy = submit(cluster, kmer_config("busy", "busy.fa"))
    MissionModel(busy).update(
        actions=[
            MissionModel.status.set("PLANNING"),
            MissionModel.planning_lease_until.set(time.time() + 10**6),
            MissionModel.started_at.set(LONG_AGO),
        ]
    )
    report = sweeper.sweep(later(60))
    assert report.timed_out == [] and report.replanned == []
    assert mission(cluster, busy)["status"] == "PLANNING"


def test_a_complete_mission_whose_settling_was_lost_is_settled(cluster: InProcessCluster):
    """Every outcome counted, but the event that brought the last count died before it merged."""
    mission_id = start(cluster, kmer_config("unsettled", "unsettled.fa", count=4))
    cluster.run_workers(mission_id)
    store = get_context().store
    for t in store.transactions.of(mission_id):  # blocks, maybe
        outcome = Outcome(mission_id, t.index, True, t.claim, t.span)
        key = part_key(mission_id, t.index, t.claim, t.span)
        assert store.transactions.count_outcome(outcome, key)
    cluster.sqs.purge_queue(QueueUrl=cluster.stack.result_queue_url)  # the events: gone
    assert mission(cluster, mission_id)["status"] == "RUNNING"
    report = sweeper.sweep(get_context())
    assert report.settled == [mission_id]
    done = mission(cluster, mission_id)
    assert done["status"] == "SUCCEEDED" and done["result"]
    assert len(cluster.emails()) == 1


def test_outcomes_whose_events_were_lost_are_recounted(cluster: InProcessCluster):
    """The part (and a failure marker) stored, the worker's finish recorded, the events in the
    DLQ: the sweeper counts them from the transactions, then settles."""
    argv = ["{python}", "-c", "import sys; sys.exit(7)"]
    failing = start(
        cluster, kmer_config("lost events", "le.fa", count=2, app={"argv": argv}, max_attempts=1)
    )
    cluster.run_workers(failing)
    cluster.sqs.purge_queue(QueueUrl=cluster.stack.result_queue_url)
    assert mission(cluster, failing)["status"] == "RUNNING"
    report = sweeper.sweep(get_context())
    assert report.recounted == 2 and report.settled == [failing]
    done = mission(cluster, failing)
    assert done["status"] == "FAILED" and done["transactions"]["FAILED"] == 2
    [email] = cluster.emails()
    assert "exit code 7" in email.body
    assert sweeper.sweep(get_context()).recounted == 0  # once


def test_the_lease_is_taken_back_before_the_failure_is_reported(cluster: InProcessCluster):
    """A worker that heartbeats between the sweeper's read and its take-back keeps its
    transaction: no failure marker is written, nothing is counted FAILED."""
    mission_id = start(cluster, kmer_config("alive", "alive.fa", count=2, max_attempts=1))
    txn = claim(mission_id, "i-slow/0", time.time() - 600, 1)  # its lease looks expired...
    store = get_context().store
    [stale] = store.transactions.leased(mission_id)
    assert store.transactions.extend_lease(txn, "i-slow/0", time.time(), 300)  # ...it beats
    sweeper._take_back(
        get_context(),
        store.missions.get(mission_id),
        stale,
        time.time(),
        report := sweeper.SweepReport(),
    )
    assert report.failed == 0
    key = failure_key(mission_id, txn.index, 1)
    listed = cluster.s3.list_objects_v2(
        Bucket=cluster.stack.outputs["ResultBucketName"], Prefix=key
    )
    assert listed.get("KeyCount", 0) == 0
    cluster.deliver_result_events()
    assert rows(cluster, mission_id)[txn.index]["status"] == "RUNNING"
    assert mission(cluster, mission_id)["transactions"]["FAILED"] == 0


def test_a_lost_lease_out_of_attempts_is_failed_even_if_the_marker_never_lands(
    cluster: InProcessCluster,
):
    """A sweeper died right after taking the lease back, before writing the failure marker:
    the next sweep counts the failure from the transaction itself."""
    mission_id = start(cluster, kmer_config("no marker", "nm.fa", count=1, max_attempts=1))
    claim(mission_id, "i-dead/0", time.time() - 600, 1)
    cluster.ec2.terminate_instances(InstanceIds=live_instances(cluster, mission_id))
    store = get_context().store
    [stale] = store.transactions.leased(mission_id)
    assert store.transactions.take_back_expired(stale, time.time(), "worker lost", requeue=False)
    report = sweeper.sweep(get_context())
    assert report.recounted == 1 and report.settled == [mission_id]
    done = mission(cluster, mission_id)
    assert done["status"] == "FAILED" and done["transactions"]["FAILED"] == 1
    [email] = cluster.emails()
    assert "worker lost" in email.body


def test_stranded_work_is_relaunched_within_the_cap_and_once(cluster: InProcessCluster):
    """Every index handed out, retries waiting two lease periods, no heartbeat: the live
    instances are not working. They are replaced, never beyond max_instances, and not again
    while the replacements boot."""
    mission_id = start(cluster, kmer_config("stranded", "st.fa", count=4))  # 3 instances, cap 3
    store = get_context().store
    for slot in range(4):
        t = claim(mission_id, f"i-hung/{slot}", time.time(), 300)
        store.transactions.requeue(t, f"i-hung/{slot}", 1, "failed once", time.time())
    assert sweeper.sweep(get_context()).relaunched == {}  # the retries are fresh
    report = sweeper.sweep(later(600))
    assert 1 <= report.relaunched[mission_id] <= 3
    alive = mission_instances(cluster.ec2, mission_id, ["pending", "running"])
    assert len(alive) <= 3
    assert sweeper.sweep(later(660)).relaunched == {}  # the replacements are booting
    assert len(mission_instances(cluster.ec2, mission_id, ["pending", "running"])) <= 3


def test_a_live_heartbeat_means_nothing_is_stranded(cluster: InProcessCluster):
    mission_id = start(cluster, kmer_config("working", "w.fa", count=2))
    store = get_context().store
    first = claim(mission_id, "i-a/0", time.time(), 300)
    store.transactions.requeue(first, "i-a/0", 1, "failed once", time.time())
    claim(mission_id, "i-b/0", time.time() + 600, 10**6)  # a long transaction, heartbeating
    assert sweeper.sweep(later(600)).relaunched == {}


def test_recount_reads_items_not_events(cluster: InProcessCluster):
    """A transaction finished by its worker but never counted is found from its item alone."""
    mission_id = start(cluster, kmer_config("items", "items.fa", count=2))
    cluster.run_workers(mission_id)
    cluster.sqs.purge_queue(QueueUrl=cluster.stack.result_queue_url)
    uncounted = get_context().store.transactions.finished_uncounted(mission_id)
    assert sorted(t.index for t in uncounted) == [0, 1]
    assert all(TransactionModel.get(mission_id, t.index).counted is None for t in uncounted)
