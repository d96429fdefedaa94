"""A whole mission with the AWS-fidelity profile on (LIGHTHPC_FIDELITY, as a test sets it):
conflicts, hot-item throttling and GSI lag injected, small latency. The result events are
delivered while the workers run, as Lambda would, so the count transactions meet the workers'
writes on the mission item."""

from __future__ import annotations

import json
import threading
import time

import pytest

from local import fidelity
from local.inprocess import InProcessCluster
from tests.functional.test_mission import SAMPLE, assert_succeeded, kmer_config, submit

# A tenth of AWS's latency; a hot item at 8 writes/s (so the mission's cursor and counters
# are throttled: with claims in blocks and counts per batch, a 12-transaction mission writes
# its item a few times a second at most); a write in flight for 500 ms (at 200 ms, one run in
# three met no conflict once the apps started faster); GSIs two seconds behind
# (long enough that a loaded CI machine still queries within it); EC2 always fills.
FIDELITY = (
    "aws,latency_scale=0.1,hot_item_writes_per_second=8,conflict_window_seconds=0.5,"
    "gsi_lag_seconds=2,insufficient_capacity_rate=0,fleet_shortfall_rate=0"
)


def listed_missions(cluster: InProcessCluster) -> list[dict]:
    return json.loads(cluster.get("/missions").body)["missions"]


@pytest.fixture
def cluster(tmp_path):
    with InProcessCluster.running(workdir=tmp_path, env={"LIGHTHPC_FIDELITY": FIDELITY}) as c:
        yield c


def test_a_mission_succeeds_against_the_aws_fidelity_profile(cluster: InProcessCluster, capsys):
    profile = fidelity.active()
    assert profile is not None and profile.options.gsi_lag_seconds == 2

    mission_id = submit(cluster, kmer_config("faithful", "samples/faithful.fa"))
    # The list is a GSI: it lags.
    assert mission_id not in [m["mission_id"] for m in listed_missions(cluster)]
    cluster.upload("samples/faithful.fa", SAMPLE)
    cluster.deliver_source_events()

    stop = threading.Event()
    errors: list[BaseException] = []

    def deliver_results() -> None:
        try:
            while not stop.is_set():
                cluster.deliver_result_events()
                time.sleep(0.02)
        except BaseException as e:
            errors.append(e)

    results = threading.Thread(target=deliver_results)
    results.start()
    try:
        cluster.run_workers(mission_id)
    finally:
        stop.set()
        results.join()
    assert not errors, errors
    cluster.deliver_result_events()

    mission = json.loads(cluster.get(f"/missions/{mission_id}").body)
    assert_succeeded(cluster, mission_id, mission, "faithful")
    deadline = time.monotonic() + 10
    while mission_id not in [m["mission_id"] for m in listed_missions(cluster)]:
        assert time.monotonic() < deadline, "still not listed long after the lag"
        time.sleep(0.2)

    injected = profile.ledger.as_dict()
    with capsys.disabled():
        print(f"\ninjected during one mission: {profile.ledger.summary()}")
    assert injected["calls_delayed"] > 0
    assert injected["gsi_lag_hides"] >= 1
    assert injected["throttles"] > 0
    assert injected["transaction_conflicts"] + injected["write_conflicts"] > 0


def test_a_pipeline_with_a_reduce_against_the_aws_fidelity_profile(cluster: InProcessCluster):
    """Stages under AWS's semantics: a stage with a reduce, then a stage over its result, every
    start delivered twice, conflicts, throttling and GSI lag injected; one email at the end.
    (Result events once each: delivered twice back to back, a batch's recounts alone would
    take more than this profile's hot item allows, 8 writes/s; they are redelivered later on
    AWS, as the test of a mission above shows.)"""
    from tests.functional.test_pipelines import rank_config, stage
    from tests.functional.test_stages import TOP, expected_top, kmer_top_reduce

    match = kmer_config("match", "samples/staged.fa", reduce=kmer_top_reduce())
    copy = {
        **rank_config(),
        "split": {"mode": "lines", "lines_per_transaction": 2},
        "app": {"argv": ["{python}", "-c", COPY, "{input}", "{output}"]},
    }
    body = {
        "name": "faithful stages",
        "notify": "owner@example.org",
        "budget_usd": 100,
        "stages": [stage("match", match), stage("rank", copy)],
    }
    response = cluster.submit(body, path="/pipelines")
    assert response.status_code == 201, response.body
    created = json.loads(response.body)
    first, second = (s["mission_id"] for s in created["stages"])
    cluster.upload("samples/staged.fa", SAMPLE)
    for mission_id in (first, f"{first}-reduce", second):
        cluster.deliver_source_events(times=2)
        cluster.run_workers(mission_id)
        cluster.deliver_result_events()
    done = json.loads(cluster.get(f"/pipelines/{created['pipeline_id']}").body)
    assert done["status"] == "SUCCEEDED", [(s["status"], s["error"]) for s in done["stages"]]
    assert cluster.result(done["stages"][1]["result"]) == expected_top()
    assert expected_top().count(b"\n") == TOP
    assert [e.subject for e in cluster.emails()] == ["lighthpc pipeline: faithful stages SUCCEEDED"]


# Copies its slice of lines: the second stage's result is the first's, line for line.
COPY = "import shutil, sys; shutil.copyfile(sys.argv[1], sys.argv[2])"
