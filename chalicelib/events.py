"""The scheduler's inbox: S3 object notifications and start requests, sent and read here.

S3 notifications arrive through SQS (see ARCHITECTURE.md, "Why S3 -> SQS"). Powertools' `S3Event`
data class reads them (its Parser model rejects moto's records, which lack some fields).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes import S3Event

if TYPE_CHECKING:
    from chalicelib.context import Context

START_REQUEST = "lighthpc:start"
MERGE_REQUEST = "lighthpc:merge"


@dataclass(frozen=True)
class ObjectCreated:
    bucket: str
    key: str  # decoded: S3 sends keys URL-encoded, with '+' for a space
    size: int
    etag: str


@dataclass(frozen=True)
class StartRequest:
    """Sent by the API when a config arrives: the input may already be in the bucket."""

    mission_id: str


@dataclass(frozen=True)
class MergeRequest:
    """Sent to result_processor's own queue by a merge that stopped before its end (its
    invocation's time ran out): continue it from its checkpoint (`chalicelib.merge`)."""

    mission_id: str


SourceEvent = ObjectCreated | StartRequest | MergeRequest


def start_request_body(mission_id: str) -> str:
    return json.dumps({"type": START_REQUEST, "mission_id": mission_id})


def send_start_request(ctx: Context, mission_id: str) -> None:
    """Ask light_scheduler to start the mission if its input is in (and to take over from a
    planner that died): all planning happens there, whoever asks."""
    ctx.aws.sqs.send_message(
        QueueUrl=ctx.aws.queue_url(ctx.settings.source_queue),
        MessageBody=start_request_body(mission_id),
    )


def send_merge_request(ctx: Context, mission_id: str) -> None:
    ctx.aws.sqs.send_message(
        QueueUrl=ctx.aws.queue_url(ctx.settings.result_queue),
        MessageBody=json.dumps({"type": MERGE_REQUEST, "mission_id": mission_id}),
    )


def parse_queue_body(body: str) -> list[SourceEvent]:
    """The events one SQS message carries: none for `s3:TestEvent`, several for S3 batches."""
    message: Any = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError("queue message is not a JSON object")
    try:
        return _events_of(message)
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"malformed queue message: {e!r}") from e


def _events_of(message: dict[str, Any]) -> list[SourceEvent]:
    if message.get("type") == START_REQUEST:
        return [StartRequest(str(message["mission_id"]))]
    if message.get("type") == MERGE_REQUEST:
        return [MergeRequest(str(message["mission_id"]))]
    if message.get("Event") == "s3:TestEvent":
        return []
    if "Records" not in message:
        raise ValueError("queue message is neither an S3 notification nor a start request")
    events: list[SourceEvent] = []
    for record in S3Event(message).records:
        if not record.event_name.startswith("ObjectCreated"):
            continue
        obj = record.s3.get_object
        events.append(
            ObjectCreated(
                bucket=record.s3.bucket.name,
                key=unquote_plus(obj.key),
                size=int(obj.get("size") or 0),
                etag=obj.etag or "",
            )
        )
    return events
