"""The worker's trimmed EC2 model works against the embedded AWS: the agent's one EC2 call."""

from __future__ import annotations

from chalicelib.aws import client, reset_clients
from chalicelib.context import get_context
from worker_ami.service_models import use_trimmed_models


def test_a_client_from_the_trimmed_model_terminates_an_instance(cluster) -> None:
    full = get_context().aws.ec2
    launched = full.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)
    instance_id = launched["Instances"][0]["InstanceId"]
    reset_clients()  # a session of its own, as the worker process has
    try:
        use_trimmed_models()
        ec2 = client("ec2")
        assert ec2.meta.service_model.operation_names == ["TerminateInstances"]
        answer = ec2.terminate_instances(InstanceIds=[instance_id])
    finally:
        reset_clients()  # the rest of the process gets botocore's whole model again
    assert answer["TerminatingInstances"][0]["InstanceId"] == instance_id
    described = full.describe_instances(InstanceIds=[instance_id])
    state = described["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state in ("shutting-down", "terminated")
    assert len(get_context().aws.ec2.meta.service_model.operation_names) > 1
