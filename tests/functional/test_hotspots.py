"""local.hotspots: writes per DynamoDB item and requests per S3 prefix, from every client."""

from __future__ import annotations

import boto3
from moto import mock_aws

from local.hotspots import HotspotCounter


def test_writes_are_counted_per_item_and_requests_per_prefix():
    counter = HotspotCounter({"t": ("pk", "sk")})
    with mock_aws(), counter.installed():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(
            TableName="t",
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "N"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        hot = {"pk": {"S": "m"}, "sk": {"N": "0"}}
        ddb.put_item(TableName="t", Item={**hot, "n": {"N": "1"}})
        ddb.update_item(
            TableName="t",
            Key=hot,
            UpdateExpression="ADD n :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
        ddb.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": "t",
                        "Key": hot,
                        "UpdateExpression": "SET x = :o",
                        "ExpressionAttributeValues": {":o": {"N": "1"}},
                    }
                },
                {"Put": {"TableName": "t", "Item": {"pk": {"S": "m"}, "sk": {"N": "1"}}}},
                {
                    "ConditionCheck": {
                        "TableName": "t",
                        "Key": {"pk": {"S": "m"}, "sk": {"N": "2"}},
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
            ]
        )
        ddb.batch_write_item(
            RequestItems={"t": [{"DeleteRequest": {"Key": {"pk": {"S": "m"}, "sk": {"N": "1"}}}}]}
        )
        ddb.get_item(TableName="t", Key=hot)  # a read: not counted
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="bucket")
        for i in range(3):
            s3.put_object(Bucket="bucket", Key=f"parts/m-1/{i}.out", Body=b"x")
        s3.put_object(Bucket="bucket", Key="parts/m-2/0.out", Body=b"x")
    item, writes = counter.hottest_item()
    assert writes == 3 and '"sk": {"N": "0"}' in item, counter.item_writes
    assert counter.item_writes[item.replace('"N": "0"', '"N": "1"')] == 2  # Put, then Delete
    assert sum(counter.item_writes.values()) == 5  # the ConditionCheck wrote nothing
    assert counter.hottest(counter.item_wcu)[1] == 4  # Put 1, ADD 1, in a transaction 2
    assert counter.hottest_prefix() == ("bucket/parts/m-1", 3)
    assert counter.prefix_writes["bucket/parts/m-1"] == 3 and not counter.prefix_reads
    assert counter.prefix_requests["bucket/parts/m-2"] == 1
