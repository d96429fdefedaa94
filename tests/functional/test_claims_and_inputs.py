"""An outcome counts only from the claim that holds its transaction (issue 11, defect 11), and a
mission runs on the input it planned (defect 7)."""

from __future__ import annotations

import json
import time

from chalicelib.context import get_context
from chalicelib.layout import part_key
from local.inprocess import InProcessCluster
from tests.functional.test_mission import (
    assert_succeeded,
    kmer_config,
    single_process_result,
    submit,
)
from tests.functional.test_reliability import claim, mission, rows, start


def spot_warning(cluster: InProcessCluster, instance_id: str) -> dict:
    event = cluster.api.events.generate_cw_event(
        source="aws.ec2",
        detail_type="EC2 Spot Instance Interruption Warning",
        detail={"instance-id": instance_id, "instance-action": "terminate"},
        resources=[f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"],
    )
    return cluster.api.lambda_.invoke("spot_interruption", event).payload


def test_a_stale_part_from_a_handed_back_claim_is_not_counted(cluster: InProcessCluster):
    """The control side hands the interrupted instance's work back while its app still runs;
    another worker claims it again. The first app's part, arriving while the second claim
    runs, counts for nothing; the second claim's part is the one counted and merged."""
    mission_id = start(cluster, kmer_config("stale", "stale.fa", count=1))
    doomed = sorted(cluster.instance_states(mission_id))[0]
    first = claim(mission_id, f"{doomed}/0", time.time(), 300)
    assert spot_warning(cluster, doomed) == {"handed_back": 1}
    second = claim(mission_id, "i-replacement/0", time.time(), 300)
    assert (second.index, second.claim) == (first.index, first.claim + 1)

    bucket = cluster.stack.outputs["ResultBucketName"]
    stale = part_key(mission_id, first.index, first.claim)
    cluster.s3.put_object(Bucket=bucket, Key=stale, Body=b"from the interrupted instance\n")
    cluster.deliver_result_events()
    after = rows(cluster, mission_id)[first.index]
    assert (after["status"], after["lease_owner"]) == ("RUNNING", "i-replacement/0")
    assert mission(cluster, mission_id)["transactions"]["SUCCEEDED"] == 0

    # The replacement's own work (through the real agents) is what counts.
    cluster.ec2.terminate_instances(InstanceIds=[doomed])
    store = get_context().store
    store.transactions.hand_back(second, "i-replacement/0", time.time(), "test: let agents run")
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    done = mission(cluster, mission_id)
    assert done["status"] == "SUCCEEDED" and done["transactions"]["SUCCEEDED"] == 1
    merged = cluster.result(done["result"])
    assert b"from the interrupted instance" not in merged
    assert merged == single_process_result()  # one transaction: the whole reference interval
    [counted] = [t for t in store.transactions.of(mission_id) if t.index == first.index]
    assert counted.part_key == part_key(mission_id, first.index, counted.claim) != stale


def test_a_mission_runs_on_the_input_it_planned(cluster: InProcessCluster):
    """The input is uploaded again (another sample) after planning: the workers still read the
    planned version, and the result is the planned input's."""
    mission_id = start(cluster, kmer_config("pinned", "pinned.fa"))
    planned = mission(cluster, mission_id)["input"]
    other = b">other\n" + b"ACGT" * 300 + b"\n"
    cluster.upload("pinned.fa", other)  # a new version of the same key
    cluster.deliver_source_events()  # its event: the running mission holds the key, ignored
    assert mission(cluster, mission_id)["input"] == planned
    done = json.loads(cluster.get(f"/missions/{mission_id}").body)
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    assert_succeeded(cluster, mission_id, mission(cluster, mission_id), "pinned")
    assert done["status"] == "RUNNING"


def test_a_key_a_running_mission_reads_cannot_be_bound_again(cluster: InProcessCluster):
    mission_id = start(cluster, kmer_config("holder", "held.fa", count=2))
    refused = cluster.submit(kmer_config("thief", "held.fa", count=2))
    assert refused.status_code == 409, refused.body
    assert json.loads(refused.body)["mission_id"] == mission_id
    cluster.run_workers(mission_id)
    cluster.deliver_result_events()
    assert mission(cluster, mission_id)["status"] == "SUCCEEDED"
    assert submit(cluster, kmer_config("next", "held.fa", count=2))  # free once it ended
