"""The context carries every dependency: a test swaps the AWS clients as it swaps the clock."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from chalicelib.aws import AwsClients
from chalicelib.context import Context
from chalicelib.interruptions import on_spot_interruption
from chalicelib.settings import Settings


class FakeEc2:
    def __init__(self, reservations: list[dict[str, Any]] | None) -> None:
        self.reservations = reservations
        self.calls: list[dict[str, Any]] = []

    def describe_instances(self, **params: Any) -> dict[str, Any]:
        self.calls.append(params)
        if self.reservations is None:
            error = {"Error": {"Code": "InvalidInstanceID.NotFound", "Message": "gone"}}
            raise ClientError(error, "DescribeInstances")
        return {"Reservations": self.reservations}


def context_with(ec2: FakeEc2) -> Context:
    # No store: an interruption of an instance that is not ours must never reach it.
    clients = AwsClients(factory=lambda service: {"ec2": ec2}[service])
    return Context(settings=Settings.from_env({}), store=None, aws=clients)  # type: ignore[arg-type]


def test_an_unknown_instance_is_not_ours() -> None:
    ec2 = FakeEc2(reservations=None)
    assert on_spot_interruption(context_with(ec2), "i-gone") == 0
    assert ec2.calls == [{"InstanceIds": ["i-gone"]}]


def test_an_instance_without_the_mission_tag_is_not_ours() -> None:
    ec2 = FakeEc2([{"Instances": [{"InstanceId": "i-1", "Tags": [{"Key": "Name", "Value": "x"}]}]}])
    assert on_spot_interruption(context_with(ec2), "i-1") == 0


def test_queue_urls_are_looked_up_once_per_process() -> None:
    class FakeSqs:
        lookups = 0

        def get_queue_url(self, QueueName: str) -> dict[str, str]:
            FakeSqs.lookups += 1
            return {"QueueUrl": f"https://sqs/{QueueName}"}

    sqs = FakeSqs()
    clients = AwsClients(factory=lambda service: sqs)
    assert clients.queue_url("q") == clients.queue_url("q") == "https://sqs/q"
    assert FakeSqs.lookups == 1
