"""result_processor ("RsltProc"): count each outcome once; the completing event merges and mails.

Idempotency here is by conditional writes (see `Store.count_outcome`, `Store.finish_mission`,
`Store.claim_notification`): a part stored twice is counted once, a late event for a finished
mission changes nothing, and exactly one holder sends the email.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from botocore.exceptions import ClientError

from chalicelib import merge, stages
from chalicelib.capacity import mission_instances
from chalicelib.context import Context
from chalicelib.domain import NO_USAGE, Mission, Pipeline, Usage
from chalicelib.events import MergeRequest, ObjectCreated, SourceEvent
from chalicelib.layout import (
    SHA256_METADATA,
    FailureMarker,
    Outcome,
    manifest_key,
    parse_outcome_key,
)
from chalicelib.notify import (
    MAX_FAILURES_LISTED,
    FailedTransaction,
    MissionReport,
    PipelineReport,
    publish,
    publish_pipeline,
)
from chalicelib.observability import bind_mission, count, logger
from chalicelib.states import (
    TERMINAL_MISSION,
    MissionStatus,
    TransactionStatus,
    mission_outcome,
    shown_status,
)
from chalicelib.store.transactions import MAX_COUNTED_AT_ONCE
from chalicelib.usage import account_alive_instances, ages_of, still_running

NOTIFY_LEASE_SECONDS = 120


def count_batch(ctx: Context, items: list[SourceEvent]) -> set[SourceEvent]:
    """Count a batch's outcomes together before they are handled one by one: per mission, its
    blocks in one DynamoDB transaction with one write of the mission's counts (the hottest
    item, written once per batch rather than once per block), then the mission settled once.

    All or nothing per mission: if any of them was counted already or is stale (a duplicate
    event, a part from a lost claim), none is, and each is then handled on its own. Returns
    the events counted and settled here, which `handle_result_object` then skips."""
    groups: dict[str, dict[str, tuple[SourceEvent, Outcome]]] = {}
    for obj in items:
        if isinstance(obj, ObjectCreated) and obj.bucket == ctx.settings.result_bucket:
            outcome = parse_outcome_key(obj.key)
            if outcome is not None:  # a key twice in a batch is counted once (by its first)
                groups.setdefault(outcome.mission_id, {}).setdefault(obj.key, (obj, outcome))
    handled: set[SourceEvent] = set()
    for mission_id, by_key in groups.items():
        if len(by_key) < 2:
            continue  # one alone is counted as usual
        bind_mission(mission_id)
        batch = list(by_key.items())[:MAX_COUNTED_AT_ONCE]
        entries = [
            (outcome, key, None if outcome.succeeded else _read_failure_marker(ctx, key))
            for key, (_, outcome) in batch
        ]
        if not ctx.store.transactions.count_outcomes(entries):
            logger.info("batch not counted at once: one by one", extra={"outcomes": len(batch)})
            continue
        for outcome, _, _ in entries:
            count(
                "TransactionsSucceeded" if outcome.succeeded else "TransactionsFailed", outcome.span
            )
        logger.info("outcomes counted at once", extra={"outcomes": len(batch)})
        handled |= {obj for _, (obj, _) in batch}
        try:
            settle(ctx, mission_id)
        except merge.MergeSuspended as e:
            logger.info("merge under way", extra={"why": str(e)})
    bind_mission(None)
    return handled


def handle_result_object(ctx: Context, obj: SourceEvent) -> None:
    if isinstance(obj, MergeRequest):
        continue_merge(ctx, obj.mission_id)
        return
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
        count("TransactionsSucceeded" if outcome.succeeded else "TransactionsFailed", outcome.span)
    logger.info(
        "outcome counted" if counted else "outcome already counted",
        extra={"index": outcome.index, "span": outcome.span, "succeeded": outcome.succeeded},
    )
    try:
        settle(ctx, outcome.mission_id)
    except merge.MergeSuspended as e:  # continued by its own request (or the sweeper)
        logger.info("merge under way", extra={"why": str(e)})


def continue_merge(ctx: Context, mission_id: str) -> None:
    """A merge that ran out of time asked for this: settle the mission, the merge continuing
    from its checkpoint; or, if the mission ended meanwhile, clean up what the merge left."""
    bind_mission(mission_id)
    mission = ctx.store.missions.get(mission_id)
    if mission.status is not MissionStatus.RUNNING:
        merge.abandon(ctx, mission)
        return
    try:
        settle(ctx, mission_id)
    except merge.MergeSuspended as e:
        logger.info("merge under way", extra={"why": str(e)})


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
        # Every outcome is in: the instances still alive (their agents exiting) are accounted
        # by their age now, before the merge, whose receipt then has the mission's figures
        # whole (no instance left to add), and before the end refuses their agents' reports.
        added = account_alive_instances(ctx, mission)
        merged = merge_parts(ctx, mission, lambda: added) if mission.succeeded else None
        if final is MissionStatus.SUCCEEDED and merged and mission.config.reduce is not None:
            # The concatenation is the reduce's input; the reduce's output will be the result.
            ctx.store.missions.begin_reduce(mission, merged)
        else:
            ctx.store.missions.finish(mission, final, merged, NO_USAGE, ctx.clock())
        mission = ctx.store.missions.get(mission_id)
    if mission.status is MissionStatus.REDUCING:
        stages.advance_reduce(ctx, mission)
        mission = ctx.store.missions.get(mission_id)
    if mission.status is MissionStatus.CANCELLED:
        # Its email waits until its figures are final (`cancel_settled`): the cancel or the
        # sweeper sends it. A part arriving after the cancel changes nothing.
        return
    if mission.terminal and mission.notified_at is None:
        send_report(ctx, mission)


# A cancel's email waits at least this long after the cancel: what the cancel could not see yet
# has then shown up and been settled by a sweep (a lease claimed just before it: the lease index
# is a GSI; an instance launched just before it: DescribeInstances is eventually consistent),
# and every live worker has looked at its mission or renewed its lease (`cancel_quiet_seconds`).
CANCEL_QUIET_LEASE_FRACTION = 1 / 3  # of LEASE_SECONDS: one heartbeat period
# ... and goes out this long after the cancel at the latest, whatever is still winding down.
CANCEL_EMAIL_DEADLINE_SECONDS = 600.0


def cancel_quiet_seconds(ctx: Context) -> float:
    return ctx.settings.lease_seconds * CANCEL_QUIET_LEASE_FRACTION


def cancel_settled(ctx: Context, mission: Mission, busy: bool) -> bool:
    """Whether a cancelled mission's figures are final, so that its one email may go out.

    The counts are final at the cancel itself (counting needs RUNNING); the usage once its
    instances are stopped and accounted (`stop_instances`). So: a mission cancelled before it
    began planning (nothing launched, nothing claimed) at once; otherwise once the quiet period
    has passed and a wind-down (`busy`: it stopped or settled something) found nothing left;
    and by the deadline in any case.
    """
    if mission.started_at is None:
        return True
    ended = (mission.finished_at or mission.created_at).timestamp()
    since = ctx.clock() - ended
    if since >= CANCEL_EMAIL_DEADLINE_SECONDS:
        return True
    return since >= cancel_quiet_seconds(ctx) and not busy


def stop_instances(ctx: Context, mission: Mission) -> list[str]:
    """Terminate the live instances of a mission that ended, and account their usage: their age
    now (EC2 bills no further), since their agents' own reports are refused from here on.
    Only the instances this call moved out of pending/running count, and each only if its
    agent did not report it first (`account_by_age`). Returns their ids."""
    ec2, now = ctx.aws.ec2, ctx.clock()
    alive = {
        i["InstanceId"]: i
        for i in mission_instances(ec2, mission.mission_id, ["pending", "running"])
    }
    ids, stopped = list(alive), []
    for start in range(0, len(ids), 1000):  # TerminateInstances takes at most 1000 ids
        answer = ec2.terminate_instances(InstanceIds=ids[start : start + 1000])
        stopped += [
            t["InstanceId"]
            for t in answer.get("TerminatingInstances", [])
            if t.get("PreviousState", {}).get("Name") in ("pending", "running")
        ]
    if stopped:
        ages = ages_of([alive[i] for i in stopped if i in alive], now)
        ctx.store.missions.account_by_age(mission.mission_id, ages, while_in=TERMINAL_MISSION)
    return stopped


def transaction_counts(mission: Mission) -> dict[str, int]:
    """Transactions per status, as GET /missions/{id} and the email show them, from the mission
    item alone (O(1) at any size: no transaction is read). SUCCEEDED and FAILED are the counted
    outcomes; PENDING the never-claimed plus the retries waiting; RUNNING the rest, claimed and
    not yet counted (an outcome whose event is still on its way included). A cancelled
    mission's are final: what counted before the cancel, and the rest CANCELLED
    (`shown_status`)."""
    T = TransactionStatus
    counts: Counter[TransactionStatus] = Counter(
        {T.SUCCEEDED: mission.succeeded, T.FAILED: mission.failed}
    )
    if mission.status is MissionStatus.CANCELLED:
        counts[T.CANCELLED] = mission.remaining
    else:
        handed_out = min(mission.handed_out, mission.total)
        counts[T.PENDING] = mission.total - handed_out + mission.waiting
        counts[T.RUNNING] = max(0, handed_out - mission.waiting - mission.counted)
    return {s.value: counts.get(s, 0) for s in TransactionStatus} | {"total": mission.total}


def send_report(ctx: Context, mission: Mission) -> None:
    """Tell of a mission's end: start what it feeds, then send its one email, or, for a reduce
    stage, end its mission (whose email tells), or, in a pipeline, the pipeline's email once
    every stage ended (`chalicelib.pipelines`)."""
    stages.release_downstream(ctx, mission)
    if mission.reduce_of is not None:
        settle(ctx, mission.reduce_of)
        ctx.store.missions.mark_notified(mission.mission_id, ctx.clock())
        return
    if mission.pipeline is not None:
        send_pipeline_report(ctx, mission.pipeline)
        return
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


def pipeline_status(stages: Iterable[Mission]) -> MissionStatus | None:
    """A pipeline's status once every stage ended (None before): SUCCEEDED if every stage did,
    FAILED if one failed, else CANCELLED."""
    statuses = {m.status for m in stages}
    if not all(m.terminal for m in stages):
        return None
    if statuses == {MissionStatus.SUCCEEDED}:
        return MissionStatus.SUCCEEDED
    return MissionStatus.FAILED if MissionStatus.FAILED in statuses else MissionStatus.CANCELLED


def send_pipeline_report(ctx: Context, pipeline: Pipeline) -> None:
    """The pipeline's one email, once every stage ended (a failed stage fails those it feeds,
    so they all end): sent by the holder of its first stage's notification lease, then every
    stage is marked notified (off the sweeper's list). Until then, nothing."""
    stages_now = [ctx.store.missions.get(m) for m in pipeline.mission_ids]
    status = pipeline_status(stages_now)
    if status is None:
        return
    head, now = pipeline.mission_ids[0], ctx.clock()
    if not ctx.store.missions.claim_notification(head, now, NOTIFY_LEASE_SECONDS):
        return
    first = stages_now[0]
    report = PipelineReport(
        pipeline_id=pipeline.pipeline_id,
        name=pipeline.name,
        status=status.value,
        stages=[
            (stage, build_report(ctx, m))
            for (stage, _), m in zip(pipeline.stages, stages_now, strict=True)
        ],
        notify=pipeline.notify,
        submitted_by=first.submitted_by,
        budget_usd=pipeline.budget_usd,
    )
    message_id = publish_pipeline(ctx.aws.sns, ctx.settings.topic_arn, report)
    for m in pipeline.mission_ids:
        ctx.store.missions.mark_notified(m, ctx.clock())
    count("EmailsSent")
    logger.info(
        "pipeline email published", extra={"message_id": message_id, "status": status.value}
    )


def build_report(ctx: Context, mission: Mission) -> MissionReport:
    """The email's facts. Only the first MAX_FAILURES_LISTED failures are kept (the rest are
    counted): a mission may fail many thousands, each with a stderr tail, and the email lists
    no more anyway."""
    failures: list[FailedTransaction] = []
    more_failures = 0
    # Only counted failures show as FAILED: without any, no transaction needs reading.
    listed = ctx.store.transactions.of(mission.mission_id) if mission.failed else ()
    for t in listed:
        if shown_status(t.status, t.counted, mission.status) is not TransactionStatus.FAILED:
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
    manifest_uri, manifest_sha256 = receipt_of(ctx, mission)
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
        cancelled=transaction_counts(mission)[TransactionStatus.CANCELLED.value]
        if mission.status is MissionStatus.CANCELLED
        else 0,
        cancelled_by=mission.cancelled_by,
        cancelled_at=mission.finished_at if mission.status is MissionStatus.CANCELLED else None,
        manifest_uri=manifest_uri,
        manifest_sha256=manifest_sha256,
        concatenation_uri=f"s3://{bucket}/{mission.concatenation_key}"
        if mission.concatenation_key
        else None,
    )


def merge_parts(
    ctx: Context, mission: Mission, running: Callable[[], Usage] | None = None
) -> str | None:
    """Concatenate the succeeded parts in index order into one object, with its receipt next
    to it (`chalicelib.receipt`), over as many invocations as it takes (`chalicelib.merge`).

    Each part is checked against its worker's stamp (and S3's own checksum). One that does not
    match is never merged: the mission fails with the reason, and None is returned. Raises
    `merge.MergeSuspended` when the merge continues in another invocation. Once merged, the
    result and its receipt never change."""
    alive = running or (lambda: still_running(ctx, mission.mission_id))

    def usage_now() -> Usage:  # what the workers reported, and the age of those still running
        extra = alive()
        return Usage(
            instance_seconds=mission.instance_seconds + extra.instance_seconds,
            estimated_cost=mission.estimated_cost + extra.estimated_cost,
        )

    return merge.merge(ctx, mission, usage_now)


def receipt_of(ctx: Context, mission: Mission) -> tuple[str | None, str | None]:
    """The manifest's s3:// URI and sha256 (hex) for the email; (None, None) without a result,
    and no sha256 if the manifest is not there."""
    if not mission.result_key:
        return None, None
    bucket, key = ctx.settings.result_bucket, manifest_key(mission.mission_id)
    try:
        head = ctx.aws.s3.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
            raise
        return f"s3://{bucket}/{key}", None
    return f"s3://{bucket}/{key}", head.get("Metadata", {}).get(SHA256_METADATA)


def _read_failure_marker(ctx: Context, key: str) -> FailureMarker:
    body = ctx.aws.s3.get_object(Bucket=ctx.settings.result_bucket, Key=key)["Body"].read()
    return FailureMarker.from_bytes(body)
