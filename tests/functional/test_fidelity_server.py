"""The AWS-fidelity profile in server mode (as `lighthpc up` runs it): it answers every client
of moto's server, another process's too (the workers are processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from local.embedded import embedded_aws
from local.fidelity import FidelityOptions

TABLE = "fidelity-server"
ONCE = Config(retries={"mode": "standard", "total_max_attempts": 1})
CONFLICTS_ONLY = FidelityOptions(
    latency_seconds={},
    hot_item_writes_per_second=0,
    conflict_window_seconds=30.0,  # wide: the other process takes a while to start
    gsi_lag_seconds=0,
    insufficient_capacity_rate=0,
    fleet_shortfall_rate=0,
)


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with embedded_aws(server=True, fidelity=CONFLICTS_ONLY) as aws:
        boto3.client("dynamodb").create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield aws


def transact(client: Any, pk: str) -> None:
    client.transact_write_items(
        TransactItems=[
            {
                "Put": {
                    "TableName": TABLE,
                    "Item": {"pk": {"S": pk}, "v": {"N": "1"}},
                }
            }
        ]
    )


def update(client: Any, pk: str) -> None:
    client.update_item(
        TableName=TABLE,
        Key={"pk": {"S": pk}},
        UpdateExpression="ADD v :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )


def test_another_client_meets_the_transaction_in_flight(server: Any) -> None:
    transact(boto3.client("dynamodb", config=ONCE), "shared")
    with pytest.raises(ClientError) as conflict:
        update(boto3.client("dynamodb", config=ONCE), "shared")
    assert conflict.value.response["Error"]["Code"] == "TransactionConflictException"


def test_another_process_is_answered_as_aws_would(server: Any) -> None:
    transact(boto3.client("dynamodb", config=ONCE), "worker")
    before = server.fidelity.ledger.write_conflicts
    script = textwrap.dedent(
        f"""
        import boto3
        from botocore.exceptions import ClientError
        client = boto3.client("dynamodb", region_name="us-east-1")
        try:
            client.update_item(
                TableName={TABLE!r},
                Key={{"pk": {{"S": "worker"}}}},
                UpdateExpression="ADD v :one",
                ExpressionAttributeValues={{":one": {{"N": "1"}}}},
            )
            print("written")
        except ClientError as e:
            print(e.response["Error"]["Code"])
        """
    )
    env = {**os.environ, "AWS_ENDPOINT_URL": server.endpoint}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "TransactionConflictException", done.stderr
    assert server.fidelity.ledger.write_conflicts == before + 1
