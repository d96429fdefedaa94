"""Missions that feed missions (chalicelib.stages), whole, in-process on moto: a mission's reduce
stage run on a worker, and a downstream mission that waits for its upstream's result."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

from chalicelib import sweeper
from chalicelib.context import get_context, reset_process_state
from chalicelib.domain import reduce_id
from local.inprocess import InProcessCluster
from tests.functional.test_mission import SAMPLE, kmer_config, single_process_result
from worker_ami.apps.kmer_top import top

TOP = 5


def kmer_top_reduce(**overrides) -> dict:
    reduce = {
        "app": {"builtin": "kmer-top", "params": {"top": TOP}},
        "instances": {"types": ["r6i.large"], "max_instances": 1, "slots": 1},
    }
    return {**reduce, **overrides}


def mission(cluster: InProcessCluster, mission_id: str) -> dict:
    return json.loads(cluster.get(f"/missions/{mission_id}").body)


def start(cluster: InProcessCluster, config: dict, upload: bool = True) -> str:
    response = cluster.submit(config)
    assert response.status_code == 201, response.body
    mission_id = json.loads(response.body)["mission_id"]
    if upload:
        cluster.upload(config["input"], SAMPLE)
    cluster.deliver_source_events()
    return mission_id


def run_map(cluster: InProcessCluster, mission_id: str, times: int = 1) -> None:
    cluster.run_workers(mission_id)
    cluster.deliver_result_events(times=times)


def expected_top() -> bytes:
    return "".join(top(single_process_result().decode().splitlines(True), TOP)).encode()


def test_reduce_runs_on_its_own_worker_and_its_output_is_the_result(cluster: InProcessCluster):
    mission_id = start(cluster, kmer_config("ranked", "samples/r.fa", reduce=kmer_top_reduce()))
    run_map(cluster, mission_id)
    reducing = mission(cluster, mission_id)
    assert reducing["status"] == "REDUCING", reducing
    assert reducing["reduce"] == reduce_id(mission_id)
    assert cluster.emails() == []  # not before the reduce ended

    cluster.deliver_source_events()  # the reduce stage's start: planned over the merged parts
    stage = mission(cluster, reduce_id(mission_id))
    assert stage["status"] == "RUNNING", stage
    assert stage["reduce_of"] == mission_id
    assert stage["input"]["mission"] == mission_id
    assert stage["config"]["instances"]["types"] == ["r6i.large"]
    types = {i["InstanceType"] for i in cluster.instances(reduce_id(mission_id))}
    assert types == {"r6i.large"}

    run_map(cluster, reduce_id(mission_id))
    done = mission(cluster, mission_id)
    assert done["status"] == "SUCCEEDED", done
    assert cluster.result(done["result"]) == expected_top()
    assert expected_top().count(b"\n") == TOP
    concatenation = done["result"].replace(reduce_id(mission_id), mission_id)
    assert cluster.result(concatenation) == single_process_result()
    emails = cluster.emails()
    assert [e.subject for e in emails] == ["lighthpc: ranked SUCCEEDED"]
    assert done["result"] in emails[0].body and "Concatenation:" in emails[0].body
    assert mission(cluster, reduce_id(mission_id))["notified_at"] is not None
    assert (
        done["estimated_cost_usd"] > mission(cluster, reduce_id(mission_id))["estimated_cost_usd"]
    )


# Fails on attempts 1 and 2, then copies its input's first line.
FLAKY_REDUCE = (
    "import sys; attempt = int(sys.argv[1]);"
    " sys.exit('attempt %d: simulated failure' % attempt) if attempt < 3 else"
    " open(sys.argv[2], 'w').write(open(sys.argv[3]).readline())"
)


def test_reduce_that_fails_twice_then_succeeds(cluster: InProcessCluster):
    argv = ["{python}", "-c", FLAKY_REDUCE, "{attempt}", "{output}", "{input}"]
    reduce = kmer_top_reduce(app={"argv": argv}, max_attempts=3)
    mission_id = start(cluster, kmer_config("flaky reduce", "samples/f.fa", reduce=reduce))
    run_map(cluster, mission_id)
    cluster.deliver_source_events()
    run_map(cluster, reduce_id(mission_id))
    done = mission(cluster, mission_id)
    assert done["status"] == "SUCCEEDED", done
    rows = json.loads(cluster.get(f"/missions/{reduce_id(mission_id)}/transactions").body)
    assert [t["attempts"] for t in rows["transactions"]] == [3]
    first_line = single_process_result().splitlines(True)[0]
    assert cluster.result(done["result"]) == first_line
    assert len(cluster.emails()) == 1


def test_reduce_that_fails_for_good_fails_its_mission_saying_why(cluster: InProcessCluster):
    argv = ["{python}", "-c", "import sys; sys.exit('no luck ranking')"]
    reduce = kmer_top_reduce(app={"argv": argv}, max_attempts=2)
    mission_id = start(cluster, kmer_config("bad reduce", "samples/b.fa", reduce=reduce))
    run_map(cluster, mission_id)
    cluster.deliver_source_events()
    run_map(cluster, reduce_id(mission_id))
    done = mission(cluster, mission_id)
    assert done["status"] == "FAILED", done
    assert done["error"].startswith("the reduce failed: 2 attempt(s), exit code 1"), done
    assert "no luck ranking" in done["error"]
    emails = cluster.emails()
    assert [e.subject for e in emails] == ["lighthpc: bad reduce FAILED"]
    assert "no luck ranking" in emails[0].body


def test_downstream_waits_then_starts_exactly_once(cluster: InProcessCluster):
    upstream = start(cluster, kmer_config("upstream", "samples/u.fa"))
    downstream_config = kmer_config(
        "downstream",
        "unused",
        count=1,
        input={"mission": upstream},
        split={"mode": "lines", "lines_per_transaction": 10},
        app={"builtin": "seq-stats"},
    )
    response = cluster.submit(downstream_config)
    assert response.status_code == 201, response.body
    body = json.loads(response.body)
    downstream = body["mission_id"]
    assert body["upload"] is None and body["status"] == "AWAITING_INPUT"
    cluster.deliver_source_events()
    assert mission(cluster, downstream)["status"] == "AWAITING_INPUT"
    run_map(cluster, upstream)
    assert mission(cluster, upstream)["status"] == "SUCCEEDED"
    cluster.deliver_source_events(times=2)  # the upstream's end, delivered twice
    started = mission(cluster, downstream)
    assert started["status"] == "RUNNING", started
    assert started["input"]["key"] == mission(cluster, upstream)["result"].split("/", 3)[3]
    assert len(cluster.instance_states(downstream)) == started["instances"] > 0  # launched once
    run_map(cluster, downstream)
    done = mission(cluster, downstream)
    assert done["status"] == "SUCCEEDED", done
    lines = single_process_result().count(b"\n")
    assert done["transactions"]["total"] == -(-lines // 10)
    assert cluster.result(done["result"]).count(b"\n") == lines  # one line of stats per line


def test_upstream_that_fails_fails_its_downstream(cluster: InProcessCluster):
    argv = ["{python}", "-c", "import sys; sys.exit(3)"]
    upstream = start(
        cluster, kmer_config("doomed", "samples/d.fa", app={"argv": argv}, max_attempts=1)
    )
    config = kmer_config("after doomed", "unused", input={"mission": upstream})
    downstream = json.loads(cluster.submit(config).body)["mission_id"]
    cluster.deliver_source_events()
    run_map(cluster, upstream)
    cluster.deliver_source_events()
    failed = mission(cluster, downstream)
    assert failed["status"] == "FAILED", failed
    assert failed["error"].startswith(f"its upstream mission {upstream} failed"), failed
    subjects = sorted(e.subject for e in cluster.emails())
    assert subjects == ["lighthpc: after doomed FAILED", "lighthpc: doomed FAILED"]


def test_an_upstream_that_does_not_exist_is_a_400(cluster: InProcessCluster):
    config = kmer_config("orphan", "unused", input={"mission": "m-20260101000000-00000000"})
    response = cluster.submit(config)
    assert response.status_code == 400, response.body
    assert json.loads(response.body)["fields"][0]["field"] == "input.mission"


# The first attempt notes that it ran and sleeps (to be interrupted); a later one writes.
SLEEP_ONCE = (
    "import os, sys, time; marker = sys.argv[1];"
    " seen = os.path.exists(marker); seen or open(marker, 'a').close();"
    " time.sleep(0 if seen else 60); open(sys.argv[2], 'w').write('reduced\\n')"
)


def test_reduce_interrupted_by_a_spot_notice_is_handed_back_and_runs_again(
    cluster: InProcessCluster, monkeypatch, tmp_path_factory
):
    monkeypatch.setenv("SPOT_POLL_SECONDS", "0.1")
    reset_process_state()
    folder = Path(tempfile.mkdtemp(prefix="lighthpc-reduce-", dir="/tmp"))
    folder.chmod(0o777)  # apps run as users of their own when the agent is root
    try:
        argv = ["{python}", "-c", SLEEP_ONCE, f"{folder}/ran", "{output}"]
        reduce = kmer_top_reduce(app={"argv": argv})
        mission_id = start(cluster, kmer_config("noticed reduce", "samples/n.fa", reduce=reduce))
        run_map(cluster, mission_id)
        cluster.deliver_source_events()
        stage_id = reduce_id(mission_id)
        notice = {"action": "terminate", "time": "2026-11-23T20:00:00Z"}
        timer = threading.Timer(2.0, lambda: cluster.spot_notice_all(notice))
        timer.start()
        began = time.monotonic()
        reports = cluster.run_workers(stage_id)
        timer.cancel()
        assert time.monotonic() - began < 30  # stopped, not waited for
        assert [(r.interrupted, r.handed_back) for r in reports] == [(True, 1)]
        rows = json.loads(cluster.get(f"/missions/{stage_id}/transactions").body)
        assert [(t["status"], t["attempts"]) for t in rows["transactions"]] == [("PENDING", 0)]
        assert mission(cluster, mission_id)["status"] == "REDUCING"

        cluster.ec2.terminate_instances(InstanceIds=list(cluster.instance_states(stage_id)))
        assert sweeper.sweep(get_context()).relaunched == {stage_id: 1}
        cluster.run_workers(stage_id)
        cluster.deliver_result_events()
        done = mission(cluster, mission_id)
        assert done["status"] == "SUCCEEDED", done
        assert cluster.result(done["result"]) == b"reduced\n"
        assert len(cluster.emails()) == 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_mission_cancelled_while_it_reduces_cancels_its_reduce(cluster: InProcessCluster):
    mission_id = start(cluster, kmer_config("stopped", "samples/c.fa", reduce=kmer_top_reduce()))
    run_map(cluster, mission_id)
    cluster.deliver_source_events()  # the reduce stage planned, its machine launched
    stage_id = reduce_id(mission_id)
    before = mission(cluster, mission_id)["instance_seconds"]
    time.sleep(0.2)  # its machine has run a moment: the cancel accounts for it
    assert cluster.api.http.delete(f"/missions/{mission_id}").status_code == 200
    assert mission(cluster, mission_id)["status"] == "CANCELLED"
    assert mission(cluster, stage_id)["status"] == "CANCELLED"
    assert set(cluster.instance_states(stage_id).values()) == {"terminated"}
    assert mission(cluster, mission_id)["instance_seconds"] > before
    sweeper.sweep(dataclasses.replace(get_context(), clock=lambda: time.time() + 120))
    assert [e.subject for e in cluster.emails()] == ["lighthpc: stopped CANCELLED"]
