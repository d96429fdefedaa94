"""The embedded AWS's TransactWriteItems, rolled back from a journal of its items
(local/moto_patches.py) instead of moto's whole-table copies: a cancelled transaction leaves
every table exactly as it was, and a successful one writes everything."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from chalicelib.context import get_context
from local.inprocess import InProcessCluster


@pytest.fixture(scope="module")
def ddb(tmp_path_factory):
    with InProcessCluster.running(workdir=tmp_path_factory.mktemp("moto")):
        client = get_context().aws.dynamodb
        for name, keys in [("journal-pairs", ["h", "r"]), ("journal-singles", ["h"])]:
            client.create_table(
                TableName=name,
                KeySchema=[
                    {"AttributeName": k, "KeyType": t}
                    for k, t in zip(keys, ["HASH", "RANGE"], strict=False)
                ],
                AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in keys],
                BillingMode="PAY_PER_REQUEST",
            )
        yield client


def _items(ddb, table: str) -> list[dict]:
    return sorted(ddb.scan(TableName=table)["Items"], key=str)


def _seed(ddb) -> None:
    for h, r in [("a", "1"), ("a", "2"), ("c", "1")]:
        ddb.put_item(
            TableName="journal-pairs", Item={"h": {"S": h}, "r": {"S": r}, "n": {"N": "1"}}
        )
    for h in ["x", "y"]:
        ddb.put_item(TableName="journal-singles", Item={"h": {"S": h}, "n": {"N": "1"}})


def _writes(last_condition: str) -> list[dict]:
    """An update, a new item in a new partition, a delete, a put over an item, and a condition."""
    return [
        {
            "Update": {
                "TableName": "journal-pairs",
                "Key": {"h": {"S": "a"}, "r": {"S": "1"}},
                "UpdateExpression": "ADD n :one SET s = :s",
                "ExpressionAttributeValues": {":one": {"N": "1"}, ":s": {"S": "new"}},
            }
        },
        {"Put": {"TableName": "journal-pairs", "Item": {"h": {"S": "b"}, "r": {"S": "9"}}}},
        {"Delete": {"TableName": "journal-pairs", "Key": {"h": {"S": "c"}, "r": {"S": "1"}}}},
        {"Put": {"TableName": "journal-singles", "Item": {"h": {"S": "x"}, "n": {"N": "7"}}}},
        {
            "ConditionCheck": {
                "TableName": "journal-singles",
                "Key": {"h": {"S": "y"}},
                "ConditionExpression": last_condition,
                "ExpressionAttributeValues": {":n": {"N": "1"}},
            }
        },
    ]


def test_a_cancelled_transaction_leaves_every_item_as_it_was(ddb):
    _seed(ddb)
    before = _items(ddb, "journal-pairs"), _items(ddb, "journal-singles")
    with pytest.raises(ClientError) as refused:
        ddb.transact_write_items(TransactItems=_writes("n <> :n"))
    assert refused.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert (_items(ddb, "journal-pairs"), _items(ddb, "journal-singles")) == before
    # The restored items are live ones: they still take writes.
    ddb.update_item(
        TableName="journal-pairs",
        Key={"h": {"S": "a"}, "r": {"S": "1"}},
        UpdateExpression="ADD n :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    one = ddb.get_item(TableName="journal-pairs", Key={"h": {"S": "a"}, "r": {"S": "1"}})
    assert one["Item"]["n"] == {"N": "2"} and "s" not in one["Item"]


def test_a_transaction_that_holds_writes_everything(ddb):
    _seed(ddb)
    ddb.transact_write_items(TransactItems=_writes("n = :n"))
    pairs = {(i["h"]["S"], i["r"]["S"]): i for i in _items(ddb, "journal-pairs")}
    assert pairs[("a", "1")]["n"] == {"N": "2"} and pairs[("a", "1")]["s"] == {"S": "new"}
    assert ("b", "9") in pairs and ("c", "1") not in pairs
    singles = {i["h"]["S"]: i for i in _items(ddb, "journal-singles")}
    assert singles["x"]["n"] == {"N": "7"}


def test_a_transaction_writing_one_item_twice_is_refused_and_changes_nothing(ddb):
    _seed(ddb)
    before = _items(ddb, "journal-pairs")
    again = {"Delete": {"TableName": "journal-pairs", "Key": {"h": {"S": "a"}, "r": {"S": "1"}}}}
    twice = [*_writes("n = :n")[:2], again]
    with pytest.raises(ClientError) as refused:
        ddb.transact_write_items(TransactItems=twice)
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert _items(ddb, "journal-pairs") == before


def test_every_kind_of_attribute_value_reads_back_as_written(ddb):
    """Scalars are answered as moto stores them, the rest through its serializer: both must
    give back exactly what was written, through GetItem and Query alike."""
    item = {
        "h": {"S": "kinds"},
        "r": {"S": "1"},
        "empty": {"S": ""},
        "n": {"N": "-12.5"},
        "yes": {"BOOL": True},
        "no": {"BOOL": False},
        "nothing": {"NULL": True},
        "names": {"SS": ["a", "b"]},
        "numbers": {"NS": ["1", "2.5"]},
        "blob": {"B": b"\x00\xffbinary"},
        "blobs": {"BS": [b"\x01", b"\x02"]},
        "map": {"M": {"s": {"S": "x"}, "b": {"B": b"\x03"}, "l": {"L": [{"N": "1"}]}}},
        "list": {"L": [{"S": "y"}, {"M": {"n": {"NULL": True}}}, {"B": b"\x04"}]},
    }
    ddb.put_item(TableName="journal-pairs", Item=item)
    got = ddb.get_item(TableName="journal-pairs", Key={"h": item["h"], "r": item["r"]})["Item"]
    queried = ddb.query(
        TableName="journal-pairs",
        KeyConditionExpression="h = :h",
        ExpressionAttributeValues={":h": item["h"]},
    )["Items"]

    def canonical(value: dict) -> dict:  # sets come back in any order
        return {k: sorted(v) if k in ("SS", "NS", "BS") else v for k, v in value.items()}

    for read in (got, queried[0]):
        assert {k: canonical(v) for k, v in read.items()} == {
            k: canonical(v) for k, v in item.items()
        }
