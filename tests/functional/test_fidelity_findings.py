"""What the AWS-fidelity profile finds in product code: behaviour that passes on moto and not
on AWS, fixed. Each test states what AWS would do; a defect not yet fixed is a strict xfail."""

from __future__ import annotations

import json

import pytest

from local import fidelity
from local.inprocess import InProcessCluster
from tests.functional.test_mission import FLAKY, kmer_config, submit

# GSI lag alone (AWS's "typically under 1 s"), every other fault off, a little latency.
GSI_LAG_ONLY = (
    "aws,latency_scale=0.1,hot_item_writes_per_second=0,conflict_window_seconds=0,"
    "gsi_lag_seconds=1,insufficient_capacity_rate=0,fleet_shortfall_rate=0"
)


@pytest.fixture
def cluster(tmp_path):
    with InProcessCluster.running(workdir=tmp_path, env={"LIGHTHPC_FIDELITY": GSI_LAG_ONLY}) as c:
        yield c


def test_workers_still_up_run_the_retries_of_a_flaky_app(cluster: InProcessCluster):
    argv = ["{python}", "-c", FLAKY, "{attempt}", "{output}", "{start}", "{end}"]
    config = kmer_config("flaky", "in.txt", count=5, app={"argv": argv}, max_attempts=3)
    mission_id = submit(cluster, config)
    cluster.upload("in.txt", b"anything\n")
    cluster.deliver_source_events()
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    profile = fidelity.active()
    assert profile is not None and profile.ledger.gsi_lag_hides > 0
    rows = json.loads(cluster.get(f"/missions/{mission_id}/transactions").body)["transactions"]
    # As without the profile (tests/functional/test_mission.py): SUCCEEDED after 3 attempts. (Before
    # the workers looked again for retries they had just queued, each was PENDING after 1.)
    assert [(t["status"], t["attempts"]) for t in rows] == [("SUCCEEDED", 3)] * 5
    mission = json.loads(cluster.get(f"/missions/{mission_id}").body)
    assert mission["status"] == "SUCCEEDED"
