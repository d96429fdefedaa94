"""result_processor ("RsltProc"): count each outcome once; the completing event merges and mails.

Idempotency here is by conditional writes (see `Store.count_outcome`, `Store.finish_mission`,
`Store.claim_notification`): a part stored twice is counted once, a late event for a finished
mission changes nothing, and exactly one holder sends the email.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable, Iterator
from typing import Any

from boto3.s3.transfer import TransferConfig

from chalicelib.capacity import mission_instances
from chalicelib.context import Context
from chalicelib.domain import Mission, Usage
from chalicelib.events import ObjectCreated, SourceEvent
from chalicelib.layout import FailureMarker, parse_outcome_key, result_key
from chalicelib.notify import MAX_FAILURES_LISTED, FailedTransaction, MissionReport, publish
from chalicelib.observability import MetricUnit, bind_mission, count, logger, metrics
from chalicelib.pricing import estimated_cost
from chalicelib.states import MissionStatus, TransactionStatus, mission_outcome

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
    failure = None if outcome.succeeded else _read_failure_marker(ctx, obj.key)
    counted = ctx.store.transactions.count_outcome(outcome, obj.key, failure)
    if counted:
        count("TransactionsSucceeded" if outcome.succeeded else "TransactionsFailed")
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
    mission = ctx.store.missions.get(mission_id)
    if mission.status is MissionStatus.RUNNING:
        final = mission_outcome(mission.succeeded, mission.failed, mission.total)
        if final is None:
            return
        merged = merge_parts(ctx, mission) if mission.succeeded else None
        ctx.store.missions.finish(mission, final, merged, usage(ctx, mission), ctx.clock())
        mission = ctx.store.missions.get(mission_id)
    if mission.terminal and mission.notified_at is None:
        send_report(ctx, mission)


def send_report(ctx: Context, mission: Mission) -> None:
    now = ctx.clock()
    if not ctx.store.missions.claim_notification(mission.mission_id, now, NOTIFY_LEASE_SECONDS):
        return
    report = build_report(ctx, mission)
    message_id = publish(ctx.aws.sns, ctx.settings.topic_arn, report)
    ctx.store.missions.mark_notified(mission.mission_id, ctx.clock())
    count("EmailsSent")
    logger.info(
        "completion email published", extra={"message_id": message_id, "status": report.status}
    )


def build_report(ctx: Context, mission: Mission) -> MissionReport:
    """The email's facts. Only the first MAX_FAILURES_LISTED failures are kept (the rest are
    counted): a mission may fail many thousands, each with a stderr tail, and the email lists
    no more anyway."""
    failures: list[FailedTransaction] = []
    more_failures = 0
    for t in ctx.store.transactions.of(mission.mission_id):
        if t.status is not TransactionStatus.FAILED:
            continue
        if len(failures) >= MAX_FAILURES_LISTED:
            more_failures += 1
            continue
        failures.append(
            FailedTransaction(
                index=t.index,
                start=t.start,
                end=t.end,
                attempts=t.attempts,
                exit_code=t.exit_code,
                error=t.error,
            )
        )
    duration = None
    if mission.finished_at is not None:
        began = mission.started_at or mission.created_at
        duration = (mission.finished_at - began).total_seconds()
    bucket = ctx.settings.result_bucket
    return MissionReport(
        mission_id=mission.mission_id,
        name=mission.name,
        status=mission.status.value,
        total=mission.total,
        succeeded=mission.succeeded,
        failed=mission.failed,
        duration_seconds=duration,
        instance_seconds=mission.instance_seconds,
        estimated_cost=mission.estimated_cost,
        instances=mission.instances,
        result_uri=f"s3://{bucket}/{mission.result_key}" if mission.result_key else None,
        error=mission.error,
        failures=failures,
        notify=mission.notify,
        submitted_by=mission.submitted_by,
        more_failures=more_failures,
    )


def usage(ctx: Context, mission: Mission) -> Usage:
    """What exited workers reported, plus the age of the instances still running (the last
    workers are typically still exiting at completion)."""
    now = ctx.clock()
    seconds, cost = mission.instance_seconds, mission.estimated_cost
    for instance in mission_instances(ctx.aws.ec2, mission.mission_id, ["pending", "running"]):
        age = max(0.0, now - instance["LaunchTime"].timestamp())
        market = instance.get("InstanceLifecycle") or "on-demand"
        seconds += age
        cost += estimated_cost(instance.get("InstanceType"), market, age)
    return Usage(instance_seconds=seconds, estimated_cost=cost)


def merge_parts(ctx: Context, mission: Mission) -> str:
    """Concatenate the succeeded parts in index order into one object, streaming."""
    began = time.monotonic()
    s3 = ctx.aws.s3
    bucket = ctx.settings.result_bucket
    keys = (
        t.part_key
        for t in ctx.store.transactions.of(mission.mission_id)
        if t.status is TransactionStatus.SUCCEEDED and t.part_key
    )
    bodies = (s3.get_object(Bucket=bucket, Key=key)["Body"] for key in keys)
    target = result_key(mission.mission_id)
    s3.upload_fileobj(_Concatenation(bodies), bucket, target, Config=_MERGE_TRANSFER)
    metrics.add_metric(name="MergeSeconds", unit=MetricUnit.Seconds, value=time.monotonic() - began)
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


def _read_failure_marker(ctx: Context, key: str) -> FailureMarker:
    body = ctx.aws.s3.get_object(Bucket=ctx.settings.result_bucket, Key=key)["Body"].read()
    return FailureMarker.from_bytes(body)
