"""Reliability in-process on moto: lost workers, Spot interruptions, timeouts, rules, cancel."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from chalicelib.context import get_context
from chalicelib.sweeper import sweep
from local.inprocess import InProcessCluster
from tests.functional.test_mission import SAMPLE, assert_succeeded, kmer_config, submit
from worker_ami.agent import MIN_BLOCK_SECONDS

SLOW = "import sys, time; time.sleep(float(sys.argv[2])); open(sys.argv[1], 'w').write('done')"


def start(cluster: InProcessCluster, config: dict) -> str:
    mission_id = submit(cluster, config)
    cluster.upload(config["input"], SAMPLE)
    cluster.deliver_source_events()
    return mission_id


def mission(cluster: InProcessCluster, mission_id: str) -> dict:
    return json.loads(cluster.get(f"/missions/{mission_id}").body)


def rows(cluster: InProcessCluster, mission_id: str) -> list[dict]:
    return json.loads(cluster.get(f"/missions/{mission_id}/transactions").body)["transactions"]


def claim(mission_id: str, owner: str, now: float, lease: int):
    """Claim as a worker would."""
    store = get_context().store
    return store.transactions.claim_next(store.missions.get(mission_id), owner, now, lease)


def lose_a_worker(cluster: InProcessCluster, mission_id: str) -> tuple[str, int]:
    """An instance dies holding a claim: its lease is already expired, the instance is gone."""
    instance_id = sorted(cluster.instance_states(mission_id))[0]
    txn = claim(mission_id, f"{instance_id}/0", time.time() - 600, 1)
    cluster.ec2.terminate_instances(InstanceIds=[instance_id])
    return instance_id, txn.index


def test_a_lost_worker_is_swept_and_replaced(cluster: InProcessCluster):
    mission_id = start(cluster, kmer_config("lost worker", "lost.fa"))
    _, index = lose_a_worker(cluster, mission_id)
    cluster.run_workers(mission_id)  # the others finish everything else, then terminate
    cluster.deliver_result_events()
    assert mission(cluster, mission_id)["status"] == "RUNNING"
    assert rows(cluster, mission_id)[index]["status"] == "RUNNING"

    report = sweep(get_context())
    assert report.requeued == 1
    assert report.relaunched == {mission_id: 1}  # work left, no live instance
    assert rows(cluster, mission_id)[index]["status"] == "PENDING"
    assert sweep(get_context()).requeued == 0  # a second sweep changes nothing

    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    done = mission(cluster, mission_id)
    assert rows(cluster, mission_id)[index]["attempts"] == 2
    assert_succeeded(cluster, mission_id, done, "lost worker")


def test_a_lost_worker_out_of_attempts_fails_its_transaction(cluster: InProcessCluster):
    mission_id = start(cluster, kmer_config("one attempt", "one.fa", max_attempts=1))
    _, index = lose_a_worker(cluster, mission_id)
    cluster.run_workers(mission_id)
    report = sweep(get_context())
    assert (report.requeued, report.failed) == (0, 1)
    cluster.deliver_result_events()
    done = mission(cluster, mission_id)
    assert done["status"] == "FAILED"
    assert done["transactions"]["FAILED"] == 1 and done["transactions"]["SUCCEEDED"] == 11
    emails = cluster.emails()
    assert len(emails) == 1
    assert f"#{index} " in emails[0].body and "expired: worker lost" in emails[0].body


def test_a_mission_past_its_deadline_times_out(cluster: InProcessCluster):
    config = kmer_config("slow", "slow.fa", timeouts={"mission_seconds": 60})
    mission_id = start(cluster, config)
    later = dataclasses.replace(get_context(), clock=lambda: time.time() + 3600)
    report = sweep(later)
    assert report.timed_out == [mission_id]
    done = mission(cluster, mission_id)
    assert done["status"] == "FAILED" and "timed out" in done["error"]
    assert set(cluster.instance_states(mission_id).values()) == {"terminated"}
    emails = cluster.emails()
    assert len(emails) == 1 and "timed out" in emails[0].body
    assert sweep(later).timed_out == []  # once


def test_spot_warning_hands_work_back_from_the_control_side(cluster: InProcessCluster):
    mission_id = start(cluster, kmer_config("spot", "spot.fa"))
    instance_id = sorted(cluster.instance_states(mission_id))[0]
    held = [claim(mission_id, f"{instance_id}/{slot}", time.time(), 300) for slot in (0, 1)]
    event = cluster.api.events.generate_cw_event(
        source="aws.ec2",
        detail_type="EC2 Spot Instance Interruption Warning",
        detail={"instance-id": instance_id, "instance-action": "terminate"},
        resources=[f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"],
    )
    before = len(cluster.instance_states(mission_id))
    for _ in range(2):  # EventBridge delivers at least once
        cluster.api.lambda_.invoke("spot_interruption", event)
    after = rows(cluster, mission_id)
    for txn in held:
        assert after[txn.index]["status"] == "PENDING"
        assert after[txn.index]["attempts"] == 0  # an interruption spends no attempt
    assert len(cluster.instance_states(mission_id)) == before + 1  # one replacement, not two
    cluster.ec2.terminate_instances(InstanceIds=[instance_id])  # EC2 reclaims it
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    assert_succeeded(cluster, mission_id, mission(cluster, mission_id), "spot")


def test_worker_hands_back_on_a_spot_notice(cluster: InProcessCluster, monkeypatch):
    monkeypatch.setenv("SPOT_POLL_SECONDS", "0.1")
    from chalicelib.context import reset_process_state

    reset_process_state()
    argv = ["{python}", "-c", SLOW, "{output}", "30"]
    config = kmer_config(
        "noticed", "n.fa", count=2, app={"argv": argv}, instances={"max_instances": 1, "slots": 2}
    )
    mission_id = start(cluster, config)
    notice = {"action": "terminate", "time": "2026-11-23T20:00:00Z"}
    began = time.monotonic()
    # After the worker's second slot stopped waiting for the first one's pace (none comes from
    # a 30 s transaction) and claimed the other transaction: both are running.
    timer = threading.Timer(MIN_BLOCK_SECONDS + 1.0, lambda: cluster.spot_notice_all(notice))
    timer.start()
    reports = cluster.run_workers(mission_id)
    timer.cancel()
    assert time.monotonic() - began < 20  # the apps were stopped, not waited for
    assert [(r.interrupted, r.handed_back, r.succeeded) for r in reports] == [(True, 2, 0)]
    assert [(t["status"], t["attempts"]) for t in rows(cluster, mission_id)] == [
        ("PENDING", 0),
        ("PENDING", 0),
    ]


def test_exit_code_rule_fails_at_once(cluster: InProcessCluster):
    argv = ["{python}", "-c", "import sys; sys.exit(3)"]
    rules = [{"on_exit_code": "3", "action": "fail"}, {"on_exit_code": "*", "action": "retry"}]
    config = kmer_config(
        "rules", "r.fa", count=2, app={"argv": argv}, max_attempts=3, exit_rules=rules
    )
    mission_id = start(cluster, config)
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    assert [(t["status"], t["attempts"], t["exit_code"]) for t in rows(cluster, mission_id)] == [
        ("FAILED", 1, 3),
        ("FAILED", 1, 3),
    ]
    assert mission(cluster, mission_id)["status"] == "FAILED"


def test_transaction_timeout_kills_the_app_and_counts_an_attempt(cluster: InProcessCluster):
    argv = ["{python}", "-c", SLOW, "{output}", "60"]
    config = kmer_config(
        "too slow",
        "t.fa",
        count=1,
        app={"argv": argv},
        max_attempts=2,
        timeouts={"transaction_seconds": 1},
    )
    mission_id = start(cluster, config)
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    [txn] = rows(cluster, mission_id)
    assert (txn["status"], txn["attempts"]) == ("FAILED", 2)
    assert "killed after the transaction timeout of 1 s" in txn["error"]
    assert "transaction timeout" in cluster.emails()[0].body


def test_cancel_a_running_mission(cluster: InProcessCluster):
    mission_id = start(cluster, kmer_config("cancelled", "c.fa"))
    response = cluster.api.http.delete(f"/missions/{mission_id}")
    assert response.status_code == 200
    assert json.loads(response.body)["instances_terminated"] == 3
    assert set(cluster.instance_states(mission_id).values()) == {"terminated"}
    assert mission(cluster, mission_id)["status"] == "CANCELLED"
    assert claim(mission_id, "i-x/0", time.time(), 60) is None
    assert cluster.api.http.delete(f"/missions/{mission_id}").status_code == 409
    # The email waits for final figures: the sweeper sends it once the cancel has settled.
    assert cluster.emails() == []
    later = dataclasses.replace(get_context(), clock=lambda: time.time() + 120)
    assert sweep(later).mailed == [mission_id]
    emails = cluster.emails()
    assert len(emails) == 1 and emails[0].subject == "lighthpc: cancelled CANCELLED"


def test_late_and_duplicate_result_events_change_nothing(cluster: InProcessCluster):
    mission_id = start(cluster, kmer_config("late", "late.fa", count=4))
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    done = mission(cluster, mission_id)
    assert done["status"] == "SUCCEEDED"
    # S3 delivers the same part event again, much later (a part of a block, maybe).
    s3, bucket = get_context().aws.s3, get_context().settings.result_bucket
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"parts/{mission_id}/")["Contents"]
    part = max(o["Key"] for o in listed)
    body = s3.get_object(Bucket=bucket, Key=part)["Body"]
    s3.put_object(Bucket=bucket, Key=part, Body=body.read())
    cluster.deliver_result_events(times=3)
    assert mission(cluster, mission_id) == done
    assert len(cluster.emails()) == 1


@pytest.mark.parametrize("crash_after", [1, 2])
def test_a_result_processor_crash_midway_is_retried(cluster: InProcessCluster, crash_after: int):
    """The handler dies after doing part of its batch; the redelivered batch finishes it."""
    mission_id = start(cluster, kmer_config("crashy", "crash.fa", count=4))
    cluster.run_workers(mission_id)
    with cluster.crash_once("result_processor", after_records=crash_after):
        cluster.deliver_result_events()
    done = mission(cluster, mission_id)
    assert done["status"] == "SUCCEEDED" and done["transactions"]["SUCCEEDED"] == 4
    assert len(cluster.emails()) == 1


def test_a_launch_that_came_short_is_topped_up(cluster: InProcessCluster):
    from chalicelib.store.models import MissionModel

    mission_id = start(cluster, kmer_config("short", "short.fa"))  # wants 3 instances
    ids = sorted(cluster.instance_states(mission_id))
    cluster.ec2.terminate_instances(InstanceIds=ids[:2])  # as if EC2 had given only one
    MissionModel(mission_id).update(
        actions=[MissionModel.launch_errors.set("spot: InsufficientInstanceCapacity: no c5")]
    )
    assert sweep(get_context()).relaunched == {mission_id: 2}
    assert sweep(get_context()).relaunched == {}  # the errors are cleared: no second top-up
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    assert_succeeded(cluster, mission_id, mission(cluster, mission_id), "short")


def test_a_rebalance_recommendation_stops_claims(cluster: InProcessCluster):
    from chalicelib.capacity import mission_instances
    from local.inprocess import agent_for, instance_metadata

    mission_id = start(cluster, kmer_config("rebalance", "rb.fa", count=4))
    instance = mission_instances(cluster.ec2, mission_id, ["running"])[0]
    instance_id = instance["InstanceId"]
    metadata = instance_metadata(instance, rebalance=True)
    report = agent_for(instance, cluster.workdir / instance_id, metadata=metadata).run()
    assert (report.succeeded, report.handed_back) == (0, 0)  # claimed nothing
    assert [t["status"] for t in rows(cluster, mission_id)] == ["PENDING"] * 4
    assert cluster.instance_states(mission_id)[instance_id] == "terminated"
    cluster.run_workers(mission_id)  # the others (no recommendation) do the work
    cluster.deliver_result_events()
    assert mission(cluster, mission_id)["status"] == "SUCCEEDED"


def test_a_waiting_retry_is_not_stranded_while_the_cursor_hands_out_work(cluster):
    """Live instances will claim it when they come for the next index; relaunching then would
    only exceed the cap (tests/functional/test_sweeper.py has the stranded case)."""
    mission_id = start(cluster, kmer_config("stranded", "st.fa", count=4))
    launched = cluster.instance_states(mission_id)
    txn = claim(mission_id, "i-hung/0", time.time(), 300)
    get_context().store.transactions.requeue(txn, "i-hung/0", 1, "failed once", time.time())
    assert sweep(get_context()).relaunched == {}
    later = dataclasses.replace(get_context(), clock=lambda: time.time() + 600)
    assert sweep(later).relaunched == {}
    assert cluster.instance_states(mission_id) == launched


def test_a_claim_lost_between_cursor_and_item_is_requeued(cluster: InProcessCluster):
    """A worker dies after the cursor handed it an index but before its claim was written."""
    mission_id = start(cluster, kmer_config("lost claim", "lc.fa", count=6))
    lost = get_context().store.transactions._advance_cursor(mission_id, 1)  # a dead half-claim
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    assert mission(cluster, mission_id)["status"] == "RUNNING"
    report = sweep(get_context())
    assert report.requeued == 1 and report.relaunched == {mission_id: 1}
    assert rows(cluster, mission_id)[lost]["status"] == "PENDING"
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    assert mission(cluster, mission_id)["status"] == "SUCCEEDED"
    assert len(cluster.emails()) == 1
