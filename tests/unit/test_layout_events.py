"""layout (result-bucket keys) and events (SQS message bodies)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from chalicelib.events import (
    START_REQUEST,
    ObjectCreated,
    StartRequest,
    parse_queue_body,
    start_request_body,
)
from chalicelib.layout import (
    PARTS_PREFIX,
    RESULTS_PREFIX,
    FailureMarker,
    Outcome,
    failure_key,
    parse_outcome_key,
    part_key,
    result_key,
)

# ---- layout --------------------------------------------------------------------------------


def test_key_builders() -> None:
    assert part_key("m-1", 0, 1) == "parts/m-1/00000000.1.out"
    assert part_key("m-1", 42, 3) == "parts/m-1/00000042.3.out"
    assert failure_key("m-1", 7, 2) == "parts/m-1/00000007.2.failed"
    assert result_key("m-1") == "results/m-1/result.out"
    assert part_key("m", 1, 1).startswith(PARTS_PREFIX)
    assert result_key("m").startswith(RESULTS_PREFIX)


def test_part_keys_sort_in_index_order() -> None:
    indexes = [0, 1, 2, 9, 10, 11, 99, 100, 12345, 99_999_999]
    keys = [part_key("mission", i, 1) for i in indexes]
    assert sorted(keys) == keys


@pytest.mark.parametrize("claim", [1, 2, 10, 12345])
@pytest.mark.parametrize("index", [0, 1, 9, 10, 12345678, 99_999_999])
@pytest.mark.parametrize("mission_id", ["m-1", "01HXYZABCDEF", "a.b_c-d"])
def test_outcome_keys_round_trip(mission_id: str, index: int, claim: int) -> None:
    part, failure = part_key(mission_id, index, claim), failure_key(mission_id, index, claim)
    assert parse_outcome_key(part) == Outcome(mission_id, index, True, claim)
    assert parse_outcome_key(failure) == Outcome(mission_id, index, False, claim)


@pytest.mark.parametrize(
    "key",
    [
        "results/m-1/result.out",
        result_key("m-1"),
        "parts/m-1/00000001.out",  # no claim
        "parts/m-1/00000001.0.out",  # claims count from 1
        "parts/m-1/00000001.01.out",
        "parts/m-1/00000001.x.out",
        "parts/m-1/0000001.1.out",  # seven digits
        "parts/m-1/000000001.out",  # nine digits
        "parts/m-1/0000000a.out",
        "parts/m-1/00000001.txt",
        "parts/m-1/00000001.out.tmp",
        "parts/m-1/00000001",
        "parts/m-1/x/00000001.out",  # nested: not a mission's part
        "parts//00000001.out",  # no mission id
        "parts/m-1/",
        "parts/",
        "/parts/m-1/00000001.out",
        "other/parts/m-1/00000001.out",
        "samples/input.fa",
        "parts/m-1/.DS_Store",
        "",
    ],
)
def test_parse_outcome_key_ignores_everything_else(key: str) -> None:
    assert parse_outcome_key(key) is None


def test_large_index_with_more_digits_is_not_an_outcome() -> None:
    # Indexes past 8 digits make keys that the parser does not recognise.
    assert parse_outcome_key(part_key("m", 100_000_000, 1)) is None


# ---- events --------------------------------------------------------------------------------

RECORD: dict[str, Any] = {
    "eventVersion": "2.1",
    "eventSource": "aws:s3",
    "awsRegion": "us-east-1",
    "eventTime": "2024-05-01T12:00:00.000Z",
    "eventName": "ObjectCreated:Put",
    "s3": {
        "s3SchemaVersion": "1.0",
        "configurationId": "x",
        "bucket": {"name": "b", "arn": "arn:aws:s3:::b"},
        "object": {"key": "a+b%2Fc%2Bd.txt", "size": 1, "eTag": "abc"},
    },
}


def record(event_name: str = "ObjectCreated:Put", key: str = "k", size: int = 5) -> dict:
    r = copy.deepcopy(RECORD)
    r["eventName"] = event_name
    r["s3"]["object"]["key"] = key
    r["s3"]["object"]["size"] = size
    return r


def notification(*records: dict) -> str:
    return json.dumps({"Records": list(records)})


def test_s3_test_event_carries_nothing() -> None:
    body = {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2024-05-01T12:00:00.000Z",
        "Bucket": "b",
        "RequestId": "r",
        "HostId": "h",
    }
    assert parse_queue_body(json.dumps(body)) == []


@pytest.mark.parametrize("mission_id", ["m-1", "01HXYZ", "with space", "ünïcode"])
def test_start_request_round_trip(mission_id: str) -> None:
    body = start_request_body(mission_id)
    assert json.loads(body) == {"type": START_REQUEST, "mission_id": mission_id}
    assert parse_queue_body(body) == [StartRequest(mission_id)]


def test_s3_notification_decodes_the_key() -> None:
    assert parse_queue_body(json.dumps({"Records": [RECORD]})) == [
        ObjectCreated(bucket="b", key="a b/c+d.txt", size=1, etag="abc")
    ]


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("plain.fa", "plain.fa"),
        ("dir/sub/file.fa", "dir/sub/file.fa"),
        ("my+sample.fa", "my sample.fa"),
        ("a%2Bb.fa", "a+b.fa"),
        ("%C3%A9t%C3%A9.fa", "été.fa"),
        ("100%25.fa", "100%.fa"),
    ],
)
def test_key_decoding(encoded: str, decoded: str) -> None:
    [event] = parse_queue_body(notification(record(key=encoded)))
    assert isinstance(event, ObjectCreated)
    assert event.key == decoded


@pytest.mark.parametrize(
    "event_name",
    [
        "ObjectCreated:Put",
        "ObjectCreated:Post",
        "ObjectCreated:Copy",
        "ObjectCreated:CompleteMultipartUpload",
    ],
)
def test_every_object_created_kind_is_an_event(event_name: str) -> None:
    assert parse_queue_body(notification(record(event_name, key="x", size=9))) == [
        ObjectCreated("b", "x", 9, "abc")
    ]


@pytest.mark.parametrize(
    "event_name",
    ["ObjectRemoved:Delete", "ObjectRemoved:DeleteMarkerCreated", "ObjectRestore:Post"],
)
def test_other_s3_events_are_skipped(event_name: str) -> None:
    assert parse_queue_body(notification(record(event_name))) == []


def test_a_batch_keeps_created_records_in_order() -> None:
    body = notification(
        record(key="one", size=1),
        record("ObjectRemoved:Delete", key="gone"),
        record("ObjectCreated:Copy", key="two", size=2),
    )
    assert [(e.key, e.size) for e in parse_queue_body(body)] == [("one", 1), ("two", 2)]


def test_empty_records() -> None:
    assert parse_queue_body(notification()) == []


def test_missing_etag_becomes_empty() -> None:
    r = record(key="k", size=3)
    del r["s3"]["object"]["eTag"]
    assert parse_queue_body(notification(r)) == [ObjectCreated("b", "k", 3, "")]


@pytest.mark.parametrize("body", ["[]", "[1]", "1", "null", '"text"', "true"])
def test_non_object_json_is_rejected(body: str) -> None:
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_queue_body(body)


@pytest.mark.parametrize(
    "body", ["{}", '{"type": "other"}', '{"Event": "s3:Other"}', '{"records": []}']
)
def test_unknown_message_is_rejected(body: str) -> None:
    with pytest.raises(ValueError, match="neither an S3 notification nor a start request"):
        parse_queue_body(body)


def test_invalid_json_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_queue_body("not json at all")


# ---- failure marker ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "marker",
    [
        FailureMarker(error="no licence for solver", exit_code=1, attempts=3),
        FailureMarker(error="killed after the transaction timeout", exit_code=-9, timed_out=True),
        FailureMarker(error="expired: worker lost", attempts=2, timed_out=False),
        FailureMarker(error=None),
        FailureMarker(error='ünïcode "quotes"\nand lines', exit_code=0, attempts=10),
    ],
)
def test_failure_marker_round_trip(marker: FailureMarker) -> None:
    body = marker.to_bytes()
    assert isinstance(body, bytes)
    assert FailureMarker.from_bytes(body) == marker
    assert json.loads(body) == {
        "error": marker.error,
        "exit_code": marker.exit_code,
        "attempts": marker.attempts,
        "timed_out": marker.timed_out,
    }


@pytest.mark.parametrize("body", [b"", b"not json", b"{", b"\xff\xfe\x00", b"{'error': 'x'}"])
def test_failure_marker_that_is_not_json(body: bytes) -> None:
    assert FailureMarker.from_bytes(body) == FailureMarker(error="failure marker was not JSON")


@pytest.mark.parametrize("body", [b"[]", b'["error"]', b"null", b"3", b'"exit 1"', b"true"])
def test_failure_marker_that_is_not_an_object(body: bytes) -> None:
    assert FailureMarker.from_bytes(body) == FailureMarker(
        error="failure marker was not a JSON object"
    )


def test_failure_marker_with_missing_fields_takes_defaults() -> None:
    assert FailureMarker.from_bytes(b"{}") == FailureMarker(error=None)
    assert FailureMarker.from_bytes(b'{"error": "x"}') == FailureMarker(error="x")


def test_failure_marker_ignores_unknown_fields() -> None:
    body = json.dumps({"error": "x", "exit_code": 2, "host": "i-1", "extra": [1]}).encode()
    assert FailureMarker.from_bytes(body) == FailureMarker(error="x", exit_code=2)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("exit_code", "3", FailureMarker(error="e")),
        ("exit_code", 3.5, FailureMarker(error="e")),
        ("exit_code", None, FailureMarker(error="e")),
        ("exit_code", [3], FailureMarker(error="e")),
        ("exit_code", {"code": 3}, FailureMarker(error="e")),
        ("attempts", "2", FailureMarker(error="e")),
        ("attempts", 2.0, FailureMarker(error="e")),
        ("attempts", None, FailureMarker(error="e")),
        ("timed_out", "true", FailureMarker(error="e")),
        ("timed_out", 1, FailureMarker(error="e")),
        ("timed_out", "yes", FailureMarker(error="e")),
        ("error", 5, FailureMarker(error=None)),
        ("error", ["a", "b"], FailureMarker(error=None)),
        ("error", {"message": "m"}, FailureMarker(error=None)),
    ],
)
def test_failure_marker_with_wrong_types(field: str, value: Any, expected: FailureMarker) -> None:
    body = json.dumps({"error": "e", field: value}).encode()
    assert FailureMarker.from_bytes(body) == expected


@pytest.mark.parametrize(("field", "default"), [("exit_code", None), ("attempts", 0)])
def test_failure_marker_booleans_are_not_numbers(field: str, default: Any) -> None:
    """JSON `true` is not a number (Python's bool is an int). The exit code goes to DynamoDB as
    a number, and pynamodb serialises True as N "true", which DynamoDB rejects."""
    body = json.dumps({"error": "e", field: True}).encode()
    assert getattr(FailureMarker.from_bytes(body), field) is default
