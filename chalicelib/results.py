"""result_processor ("RsltProc"): count each outcome once; the completing event merges and mails.

Idempotency here is by conditional writes (see `Store.count_outcome`, `Store.finish_mission`,
`Store.claim_notification`): a part stored twice is counted once, a late event for a finished
mission changes nothing, and exactly one holder sends the email.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from boto3.s3.transfer import TransferConfig

from chalicelib import aws
from chalicelib.capacity import mission_instances
from chalicelib.context import Context
from chalicelib.events import ObjectCreated, SourceEvent
from chalicelib.layout import parse_outcome_key, result_key
from chalicelib.models import MissionModel
from chalicelib.notify import FailedTransaction, MissionReport, publish
from chalicelib.observability import bind_mission, logger
from chalicelib.pricing import estimated_cost
from chalicelib.states import TERMINAL_MISSION, MissionStatus, TransactionStatus, mission_outcome

NOTIFY_LEASE_SECONDS = 120
_MERGE_TRANSFER = TransferConfig(multipart_chunksize=16 * 1024**2, max_concurrency=4)


def handle_result_object(ctx: Context, obj: SourceEvent) -> None:
    if not isinstance(obj, ObjectCreated):
        return  # start requests belong to the scheduler's queue
    if obj.bucket != ctx.settings.result_bucket:
        logger.warning("event for another bucket ignored", extra={"bucket": obj.bucket})
        return
    outcome = parse_outcome_key(obj.key)
    if outcome is None:
        return  # merged results and anything else in the bucket are not outcomes
    bind_mission(outcome.mission_id)
    exit_code: int | None = None
    error: str | None = None
    if not outcome.succeeded:
        marker = _read_failure_marker(ctx, obj.key)
        exit_code, error = marker.get("exit_code"), marker.get("error")
    counted = ctx.store.count_outcome(
        outcome.mission_id, outcome.index, outcome.succeeded, obj.key, exit_code, error
    )
    logger.info(
        "outcome counted" if counted else "outcome already counted",
        extra={"index": outcome.index, "succeeded": outcome.succeeded},
    )
    settle(ctx, outcome.mission_id)


def settle(ctx: Context, mission_id: str) -> None:
    """Finish the mission if every transaction is in, and send its email if not yet sent.

    Safe to call any number of times, from any event: only complete missions are finished, a
    finished mission is finished once, and its email is sent by one holder.
    """
    mission = ctx.store.get_mission(mission_id)
    if mission.status == MissionStatus.RUNNING.value:
        final = mission_outcome(
            int(mission.n_succeeded), int(mission.n_failed), int(mission.n_total)
        )
        if final is None:
            return
        merged = merge_parts(ctx, mission) if mission.n_succeeded else None
        ctx.store.finish_mission(mission_id, final, merged, usage(ctx, mission), ctx.clock())
        mission = ctx.store.get_mission(mission_id)
    if MissionStatus(mission.status) in TERMINAL_MISSION and mission.notified_at is None:
        send_report(ctx, mission)


def send_report(ctx: Context, mission: MissionModel) -> None:
    now = ctx.clock()
    if not ctx.store.claim_notification(mission.mission_id, now, NOTIFY_LEASE_SECONDS):
        return
    report = build_report(ctx, mission)
    message_id = publish(aws.sns(), ctx.settings.topic_arn, report)
    ctx.store.mark_notified(mission.mission_id, ctx.clock())
    logger.info(
        "completion email published", extra={"message_id": message_id, "status": report.status}
    )


def build_report(ctx: Context, mission: MissionModel) -> MissionReport:
    failures = [
        FailedTransaction(
            index=int(t.index),
            start=int(t.start),
            end=int(t.end),
            attempts=int(t.attempts),
            exit_code=None if t.exit_code is None else int(t.exit_code),
            error=t.error,
        )
        for t in ctx.store.transactions(mission.mission_id)
        if t.status == TransactionStatus.FAILED.value
    ]
    duration = None
    if mission.finished_at is not None:
        began = mission.started_at or mission.created_at
        duration = (mission.finished_at - began).total_seconds()
    bucket = ctx.settings.result_bucket
    return MissionReport(
        mission_id=mission.mission_id,
        name=mission.name,
        status=mission.status,
        total=int(mission.n_total),
        succeeded=int(mission.n_succeeded),
        failed=int(mission.n_failed),
        duration_seconds=duration,
        instance_seconds=float(mission.instance_seconds or 0),
        estimated_cost=float(mission.estimated_cost or 0),
        instances=int(mission.n_instances or 0),
        result_uri=f"s3://{bucket}/{mission.result_key}" if mission.result_key else None,
        error=mission.error,
        failures=failures,
        notify=mission.notify,
        submitted_by=mission.submitted_by,
    )


def usage(ctx: Context, mission: MissionModel) -> tuple[float, float]:
    """(instance-seconds, estimated USD): what exited workers reported, plus the age of the
    instances still running (the last workers are typically still exiting at completion)."""
    now = ctx.clock()
    seconds = float(mission.instance_seconds or 0)
    cost = float(mission.estimated_cost or 0)
    for instance in mission_instances(aws.ec2(), mission.mission_id, ["pending", "running"]):
        age = max(0.0, now - instance["LaunchTime"].timestamp())
        market = instance.get("InstanceLifecycle") or "on-demand"
        seconds += age
        cost += estimated_cost(instance.get("InstanceType"), market, age)
    return seconds, cost


def merge_parts(ctx: Context, mission: MissionModel) -> str:
    """Concatenate the succeeded parts in index order into one object, streaming."""
    s3 = aws.s3()
    bucket = ctx.settings.result_bucket
    keys = (
        t.part_key
        for t in ctx.store.transactions(mission.mission_id)
        if t.status == TransactionStatus.SUCCEEDED.value and t.part_key
    )
    bodies = (s3.get_object(Bucket=bucket, Key=key)["Body"] for key in keys)
    target = result_key(mission.mission_id)
    s3.upload_fileobj(_Concatenation(bodies), bucket, target, Config=_MERGE_TRANSFER)
    return target


class _Concatenation(io.RawIOBase):
    """A read-only stream over several S3 bodies, one after the other, never all in memory."""

    def __init__(self, bodies: Iterable[Any]) -> None:
        self._bodies: Iterator[Any] = iter(bodies)
        self._current: Any = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._current is None:
                self._current = next(self._bodies, None)
                if self._current is None:
                    return 0
            chunk = self._current.read(len(buffer))
            if chunk:
                buffer[: len(chunk)] = chunk
                return len(chunk)
            self._current.close()
            self._current = None


def _read_failure_marker(ctx: Context, key: str) -> dict[str, Any]:
    body = aws.s3().get_object(Bucket=ctx.settings.result_bucket, Key=key)["Body"].read()
    try:
        marker = json.loads(body)
    except ValueError:
        return {"error": "failure marker was not JSON"}
    return marker if isinstance(marker, dict) else {}
