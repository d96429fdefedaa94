"""The AWS-fidelity profile against moto in-process: each fault reaches a client as AWS would
answer it (the botocore error code, the shape of the answer) and is counted in the ledger."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from local import fidelity
from local.embedded import embedded_aws
from local.fidelity import FidelityOptions

TABLE = "fidelity-items"
INDEX = "by-group"
NO_LATENCY: dict[str, tuple[float, float]] = {}


@pytest.fixture(scope="module")
def aws() -> Iterator[Any]:
    with embedded_aws(server=False, fidelity=None, env={"LIGHTHPC_FIDELITY": "off"}) as embedded:
        assert embedded.fidelity is None
        boto3.client("dynamodb").create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "group", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
            GlobalSecondaryIndexes=[
                {
                    "IndexName": INDEX,
                    "KeySchema": [{"AttributeName": "group", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            ],
        )
        yield embedded


def profile(aws: Any, **figures: Any) -> Any:
    """The profile with only the faults a test names (no latency, no fleet faults)."""
    base: dict[str, Any] = {
        "latency_seconds": NO_LATENCY,
        "hot_item_writes_per_second": 0.0,
        "conflict_window_seconds": 0.0,
        "gsi_lag_seconds": 0.0,
        "insufficient_capacity_rate": 0.0,
        "fleet_shortfall_rate": 0.0,
    }
    return fidelity.installed(FidelityOptions(**(base | figures)))


def dynamodb(attempts: int | None = None) -> Any:
    if attempts is None:
        return boto3.client("dynamodb")
    return boto3.client(
        "dynamodb", config=Config(retries={"mode": "standard", "total_max_attempts": attempts})
    )


def key(pk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}}


def code(error: pytest.ExceptionInfo) -> str:
    return error.value.response["Error"]["Code"]


def in_another_thread(call: Any) -> None:
    """A request from another caller (moto in-process tells callers apart by thread)."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as e:
            failures.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failures:
        raise failures[0]


def add_one(client: Any, pk: str) -> Any:
    return client.update_item(
        TableName=TABLE,
        Key=key(pk),
        UpdateExpression="ADD n :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )


def transact_add(client: Any, *pks: str) -> Any:
    return client.transact_write_items(
        TransactItems=[
            {
                "Update": {
                    "TableName": TABLE,
                    "Key": key(pk),
                    "UpdateExpression": "ADD n :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}},
                }
            }
            for pk in pks
        ]
    )


# ---- DynamoDB --------------------------------------------------------------------------------


def test_a_hot_item_is_throttled_and_botocore_retries_it(aws: Any) -> None:
    # 5 writes in any second: the 6th is throttled until the first leaves the window.
    once, retrying = dynamodb(attempts=1), dynamodb(attempts=10)
    for client in (once, retrying):  # warm, so that the second's writes all fall in the window
        client.describe_table(TableName=TABLE)
    with profile(aws, hot_item_writes_per_second=5.0, hot_item_window_seconds=1.0) as f:
        for _ in range(5):
            add_one(once, "hot")
        with pytest.raises(ClientError) as throttled:
            add_one(once, "hot")
        assert code(throttled) == "ProvisionedThroughputExceededException"
        add_one(once, "cold")  # another item has its own rate
        # With botocore's retries (standard mode: jittered, doubling backoff) the write lands.
        answer = add_one(retrying, "hot")
        assert answer["ResponseMetadata"]["RetryAttempts"] >= 1
        assert f.ledger.throttles >= 2
    item = dynamodb().get_item(TableName=TABLE, Key=key("hot"), ConsistentRead=True)["Item"]
    assert item["n"] == {"N": "6"}  # every refused write left the item alone


def test_a_transaction_meeting_a_recent_write_is_cancelled_at_that_item(aws: Any) -> None:
    client = dynamodb(attempts=1)
    with profile(aws, conflict_window_seconds=5.0) as f:
        in_another_thread(lambda: add_one(dynamodb(), "b"))
        with pytest.raises(ClientError) as cancelled:
            transact_add(client, "a", "b")
        assert code(cancelled) == "TransactionCanceledException"
        reasons = cancelled.value.response["CancellationReasons"]
        assert [r["Code"] for r in reasons] == ["None", "TransactionConflict"]
        assert f.ledger.transaction_conflicts == 1
        transact_add(client, "a")  # an item no one else wrote: committed
    stored = dynamodb().get_item(TableName=TABLE, Key=key("b"), ConsistentRead=True)["Item"]
    assert stored["n"] == {"N": "1"}  # the other caller's write only: the transaction left it


def test_a_plain_write_on_an_item_in_a_transaction_gets_transaction_conflict(aws: Any) -> None:
    client = dynamodb()  # botocore's own retries included: it never retries this
    with profile(aws, conflict_window_seconds=5.0) as f:
        in_another_thread(lambda: transact_add(dynamodb(), "c"))
        with pytest.raises(ClientError) as conflict:
            add_one(client, "c")
        assert code(conflict) == "TransactionConflictException"
        assert conflict.value.response["ResponseMetadata"]["RetryAttempts"] == 0
        add_one(client, "d")  # another item: fine
        in_another_thread(lambda: add_one(dynamodb(), "d"))  # a plain write holds nothing
        add_one(client, "d")
        assert f.ledger.write_conflicts == 1


def test_a_callers_own_sequential_writes_never_conflict(aws: Any) -> None:
    client = dynamodb(attempts=1)
    with profile(aws, conflict_window_seconds=5.0) as f:
        transact_add(client, "e")
        add_one(client, "e")
        transact_add(client, "e")
        assert f.ledger.transaction_conflicts == f.ledger.write_conflicts == 0


def test_the_in_flight_window_passes(aws: Any) -> None:
    client = dynamodb(attempts=1)
    with profile(aws, conflict_window_seconds=0.05):
        in_another_thread(lambda: transact_add(dynamodb(), "f"))
        time.sleep(0.1)
        add_one(client, "f")


def test_a_gsi_query_does_not_see_a_fresh_write_until_the_lag_passes(aws: Any) -> None:
    client = dynamodb()
    query = {
        "TableName": TABLE,
        "IndexName": INDEX,
        "KeyConditionExpression": "#g = :g",
        "ExpressionAttributeNames": {"#g": "group"},
        "ExpressionAttributeValues": {":g": {"S": "lagging"}},
    }
    client.put_item(TableName=TABLE, Item={**key("old"), "group": {"S": "lagging"}})
    # Two seconds: the reads below all fall within the lag on a loaded machine too.
    with profile(aws, gsi_lag_seconds=2.0) as f:
        client.put_item(TableName=TABLE, Item={**key("new"), "group": {"S": "lagging"}})
        seen = client.query(**query)
        assert [i["pk"]["S"] for i in seen["Items"]] == ["old"]
        assert seen["Count"] == seen["ScannedCount"] == 1
        scanned = client.scan(TableName=TABLE, IndexName=INDEX)
        assert "new" not in {i["pk"]["S"] for i in scanned["Items"]}
        # The table itself reads consistently: the item is there.
        assert client.get_item(TableName=TABLE, Key=key("new"), ConsistentRead=True)["Item"]
        time.sleep(2.05)
        assert client.query(**query)["Count"] == 2
        assert f.ledger.gsi_lag_hides == 2


def test_numbers_beyond_38_digits_are_refused(aws: Any) -> None:
    client = dynamodb()
    with profile(aws) as f:
        client.put_item(TableName=TABLE, Item={**key("n38"), "v": {"N": "9" * 38}})
        with pytest.raises(ClientError) as refused:
            client.put_item(TableName=TABLE, Item={**key("n40"), "v": {"N": "1" * 40}})
        assert code(refused) == "ValidationException"
        assert "38 significant digits" in refused.value.response["Error"]["Message"]
        with pytest.raises(ClientError) as in_update:
            client.update_item(
                TableName=TABLE,
                Key=key("n38"),
                UpdateExpression="SET v = :v",
                ExpressionAttributeValues={":v": {"L": [{"N": "-1." + "2" * 39}]}},
            )
        assert code(in_update) == "ValidationException"
        assert f.ledger.number_too_large == 2
    assert "Item" not in client.get_item(TableName=TABLE, Key=key("n40"))


def test_items_beyond_400_kb_are_refused_and_an_oversized_update_is_undone(aws: Any) -> None:
    client = dynamodb()
    with profile(aws) as f:
        with pytest.raises(ClientError) as refused:
            client.put_item(TableName=TABLE, Item={**key("huge"), "s": {"S": "é" * 205_000}})
        assert code(refused) == "ValidationException"  # 205,000 characters, 410,000 bytes
        # Near the limit by moto's count and by AWS's; then an update that AWS's rules (a
        # list costs 3 bytes, each number 2 and each element 1 more) take over 400 KB, and
        # moto's (1 byte a number) do not.
        client.put_item(TableName=TABLE, Item={**key("big"), "s": {"S": "x" * 400_000}})
        with pytest.raises(ClientError) as grown:
            client.update_item(
                TableName=TABLE,
                Key=key("big"),
                UpdateExpression="SET l = :l ADD n :one",
                ExpressionAttributeValues={
                    ":l": {"L": [{"N": "1"}] * 3_500},
                    ":one": {"N": "1"},
                },
            )
        assert code(grown) == "ValidationException"
        assert "Item size to update" in grown.value.response["Error"]["Message"]
        assert f.ledger.item_too_large == 2
    stored = client.get_item(TableName=TABLE, Key=key("big"), ConsistentRead=True)["Item"]
    assert set(stored) == {"pk", "s"}  # rolled back whole


# ---- latency ---------------------------------------------------------------------------------


def test_latency_is_per_service_and_sleeps_outside_the_dynamodb_lock(aws: Any) -> None:
    latency = {"dynamodb": (0.2, 0.2), "s3": (0.05, 0.05)}
    clients = [dynamodb() for _ in range(6)]
    for c in clients:  # warm: a client's first call builds its endpoint and signer (CPU, GIL)
        c.describe_table(TableName=TABLE)
    with profile(aws, latency_seconds=latency) as f:
        began = time.monotonic()
        threads = [
            threading.Thread(target=lambda c=c: c.describe_table(TableName=TABLE)) for c in clients
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        parallel = time.monotonic() - began
        assert parallel < 0.6  # six 0.2 s sleeps overlapped (serialised: 1.2 s)
        s3 = boto3.client("s3")
        bucket = aws.stack.outputs["SourceBucketName"]
        began = time.monotonic()
        s3.put_object(Bucket=bucket, Key="fidelity/small", Body=b"x")
        assert time.monotonic() - began >= 0.05
        boto3.client("sqs").list_queues()  # no figure for SQS: not delayed
        assert f.ledger.calls_delayed == 7
        assert f.ledger.seconds_delayed == pytest.approx(6 * 0.2 + 0.05)


# ---- SNS and EC2 -----------------------------------------------------------------------------


def test_sns_counts_its_256_kib_in_bytes(aws: Any) -> None:
    sns = boto3.client("sns")
    topic = aws.stack.outputs["TopicArn"]
    with profile(aws) as f:
        sns.publish(TopicArn=topic, Message="x" * 200_000, Subject="ascii")
        with pytest.raises(ClientError) as refused:
            sns.publish(TopicArn=topic, Message="é" * 140_000, Subject="under moto's count")
        assert code(refused) == "InvalidParameter"
        assert "Message too long" in refused.value.response["Error"]["Message"]
        attributes = {"notify": {"DataType": "String", "StringValue": "x" * 100}}
        with pytest.raises(ClientError):
            sns.publish(TopicArn=topic, Message="x" * 262_100, MessageAttributes=attributes)
        assert f.ledger.sns_too_large == 2


@pytest.fixture(scope="module")
def template(aws: Any) -> str:
    ec2 = boto3.client("ec2")
    ec2.create_launch_template(
        LaunchTemplateName="fidelity-workers",
        LaunchTemplateData={"ImageId": "ami-1e749f67", "InstanceType": "c5.large"},
    )
    return "fidelity-workers"


def instant_fleet(template: str, count: int, market: str = "spot") -> dict[str, Any]:
    capacity: dict[str, Any] = {"TotalTargetCapacity": count, "DefaultTargetCapacityType": market}
    capacity["SpotTargetCapacity" if market == "spot" else "OnDemandTargetCapacity"] = count
    return boto3.client("ec2").create_fleet(
        Type="instant",
        LaunchTemplateConfigs=[
            {
                "LaunchTemplateSpecification": {
                    "LaunchTemplateName": template,
                    "Version": "$Latest",
                },
                "Overrides": [{"InstanceType": "c5.large"}, {"InstanceType": "m5.large"}],
            }
        ],
        TargetCapacitySpecification=capacity,
    )


def launched(answer: dict[str, Any]) -> int:
    return sum(len(group["InstanceIds"]) for group in answer.get("Instances", []))


def test_an_instant_fleet_may_get_no_capacity_with_errors_as_aws_answers(
    aws: Any, template: str
) -> None:
    with profile(aws, insufficient_capacity_rate=1.0) as f:
        answer = instant_fleet(template, 3)
        assert launched(answer) == 0
        assert [e["ErrorCode"] for e in answer["Errors"]] == ["InsufficientInstanceCapacity"] * 2
        assert answer["Errors"][0]["Lifecycle"] == "spot"
        overrides = answer["Errors"][1]["LaunchTemplateAndOverrides"]["Overrides"]
        assert overrides == {"InstanceType": "m5.large"}
        assert f.ledger.insufficient_capacity == 1


def test_an_instant_fleet_may_be_partly_fulfilled(aws: Any, template: str) -> None:
    with profile(aws, fleet_shortfall_rate=1.0) as f:
        answer = instant_fleet(template, 4, market="on-demand")
        assert 1 <= launched(answer) <= 3
        assert answer["Errors"][0]["ErrorCode"] == "InsufficientInstanceCapacity"
        assert answer["Errors"][0]["Lifecycle"] == "on-demand"
        assert f.ledger.fleet_shortfalls == 1
    with profile(aws):  # rates at 0: AWS filled it
        assert launched(instant_fleet(template, 4)) == 4


def test_the_product_reads_a_shortfall_from_the_fleets_errors(aws: Any) -> None:
    """`launch_workers` (chalicelib/capacity.py) records what EC2 Fleet said it could not do."""
    from chalicelib.capacity import launch_workers
    from chalicelib.config import Instances
    from chalicelib.context import get_context

    ctx = get_context()
    instances = Instances(types=["c5.large", "m5.large"], max_instances=3)
    with profile(aws, insufficient_capacity_rate=1.0):
        result = launch_workers(ctx.aws.ec2, ctx.settings, "m-fidelity", instances, 3)
    assert result.instance_ids == []
    assert result.error_text and "InsufficientInstanceCapacity" in result.error_text


def test_without_the_profile_moto_is_moto_again(aws: Any) -> None:
    client = dynamodb(attempts=1)
    with profile(aws, conflict_window_seconds=5.0, gsi_lag_seconds=5.0):
        pass
    assert fidelity.active() is None
    in_another_thread(lambda: transact_add(dynamodb(), "g"))
    add_one(client, "g")  # no conflict
    client.put_item(TableName=TABLE, Item={**key("h"), "v": {"N": "1" * 40}})  # moto stores it
