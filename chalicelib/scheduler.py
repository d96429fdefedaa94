"""light_scheduler: starts a mission when both its config and its input are in, exactly once.

Config and upload may arrive in either order. The API stores the config with a binding from the
input key to the mission and asks the scheduler to start it (`StartRequest`); the S3 event asks
the same. Either finds the other's half or does nothing; `Store.begin_planning` (a conditional
write) lets exactly one of them plan, however often each is delivered.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from chalicelib.capacity import instances_wanted, launch_for
from chalicelib.config import ArgvApp, BytesSplit, CountSplit, LinesSplit, MissionConfig
from chalicelib.context import Context
from chalicelib.domain import Mission
from chalicelib.events import ObjectCreated, SourceEvent, StartRequest
from chalicelib.layout import MAX_TRANSACTIONS_EVER, line_index_key, pinned_input
from chalicelib.observability import bind_mission, count, logger
from chalicelib.planning import Plan, chunk_count_for_bytes, transaction_count_for_lines
from chalicelib.results import settle
from chalicelib.splitting import LineOffsets, encode_offsets
from chalicelib.stages import bind_input
from chalicelib.states import MissionStatus
from chalicelib.store import NotFound

# Longer than one scheduler invocation (its Lambda timeout, 300 s: counting the lines of a large
# input takes a while), shorter than the source queue's visibility timeout, so a redelivered
# event can take over from a planner that died. tests/deploy checks both against the package.
PLANNING_LEASE_SECONDS = 360
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
# How much of the input is read to tell text from binary: in bytes mode, all the scheduler reads.
SNIFF_BYTES = 64 * 1024


class PlanningError(Exception):
    """The input cannot be planned; the message goes to the owner in the email."""


def handle_source_event(ctx: Context, event: SourceEvent) -> None:
    if isinstance(event, StartRequest):
        on_start_request(ctx, event)
    else:
        on_upload(ctx, event)


def on_upload(ctx: Context, obj: ObjectCreated) -> None:
    if obj.bucket != ctx.settings.source_bucket:
        logger.warning("event for another bucket ignored", extra={"bucket": obj.bucket})
        return
    mission_id = ctx.store.missions.awaiting(obj.key)
    if mission_id is None:
        logger.info("no mission awaits this input yet", extra={"key": obj.key})
        return
    start_mission(ctx, mission_id)


def on_start_request(ctx: Context, request: StartRequest) -> None:
    try:
        mission = ctx.store.missions.get(request.mission_id)
    except NotFound:
        logger.warning(
            "start requested for an unknown mission", extra={"mission_id": request.mission_id}
        )
        return
    if mission.status is MissionStatus.AWAITING_INPUT and mission.upstream is not None:
        # Fed by another mission's result: bound once that is there, failed if it never will be.
        if not bind_input(ctx, mission):
            settle(ctx, mission.mission_id)  # the email of one that failed
            return
        mission = ctx.store.missions.get(mission.mission_id)
    startable = {MissionStatus.AWAITING_INPUT, MissionStatus.PLANNING}
    if mission.status in startable and _input_head(ctx, mission) is not None:
        start_mission(ctx, mission.mission_id)


def start_mission(ctx: Context, mission_id: str) -> None:
    mission = ctx.store.missions.begin_planning(mission_id, ctx.clock(), PLANNING_LEASE_SECONDS)
    if mission is None:
        logger.info("mission already started elsewhere", extra={"mission_id": mission_id})
        return
    bind_mission(mission_id)
    try:
        mission_plan = plan(ctx, mission)
    except PlanningError as e:
        logger.warning("mission cannot start", extra={"reason": str(e)})
        ctx.store.missions.fail_planning(mission, str(e), ctx.clock())
        settle(ctx, mission_id)  # sends the email that says why
        return
    # One token per mission: a planner that takes over from a dead one reuses it, so EC2
    # returns the fleet already launched instead of launching a second.
    launch = launch_for(ctx, mission, instances_wanted(ctx, mission, mission_plan.count))
    ctx.store.missions.mark_running(
        mission,
        mission_plan,
        instances=len(launch.instance_ids),
        launch_errors=launch.error_text,
        now=ctx.clock(),
    )
    count("InstancesLaunched", len(launch.instance_ids))
    logger.info(
        "mission running",
        extra={
            "transactions": mission_plan.count,
            "instances": len(launch.instance_ids),
            "errors": launch.error_text,
        },
    )


def plan(ctx: Context, mission: Mission) -> Plan:
    """The mission's plan (a formula: nothing per transaction); PlanningError for bad input."""
    config = mission.config
    head = _input_head(ctx, mission)
    where = f"s3://{mission.bucket_of_input(ctx.settings.source_bucket)}/{mission.input_key}"
    if head is None:
        raise PlanningError(f"the input {where} does not exist")
    size = int(head["ContentLength"])
    # An upload that is empty is a mistake; another mission's result may be empty (no match),
    # and a mission that runs its app once per transaction over the whole of it still runs.
    if size == 0 and (mission.upstream is None or not isinstance(config.split, CountSplit)):
        raise PlanningError(f"the input {where} is empty")
    if size > ctx.settings.max_input_bytes:
        raise PlanningError(
            f"the input is {size} bytes; this stage accepts at most {ctx.settings.max_input_bytes}"
        )
    # Every later read (here, and each worker's) is of this very version of the input.
    etag, version = str(head.get("ETag", "")).strip('"'), head.get("VersionId")
    ctx.store.missions.record_input(mission.mission_id, etag, size, version)
    pin = pinned_input(version, etag)
    if needs_text_input(config) and size and looks_binary(_input_start(ctx, mission, pin)):
        reason = (
            "it is split by lines"
            if isinstance(config.split, LinesSplit | BytesSplit)
            else (
                f"the built-in app {getattr(config.app, 'builtin', '')!r} reads sequences as text"
            )
        )
        raise PlanningError(f"the input {where} looks binary (NUL bytes or not UTF-8); {reason}")
    split = config.split
    limit = min(ctx.settings.max_transactions, MAX_TRANSACTIONS_EVER)
    if isinstance(split, CountSplit):
        return Plan.for_split(split, None)
    if isinstance(split, BytesSplit):
        # A formula over the size: nothing of the input is read beyond the sniff above.
        total = chunk_count_for_bytes(size, split.chunks, split.chunk_bytes)
        if total > limit:
            raise PlanningError(
                f"{size} bytes in chunks of at most {split.chunk_bytes} bytes make {total}"
                f" transactions; this stage allows at most {limit}"
            )
        return Plan.for_split(split, None, size)
    index = count_lines(ctx, mission, pin, split.lines_per_transaction, limit)
    lines = index.lines
    total = transaction_count_for_lines(lines, split.lines_per_transaction)
    if total > limit:
        raise PlanningError(
            f"{lines} lines at {split.lines_per_transaction} per transaction make {total}"
            f" transactions; this stage allows at most {limit}"
        )
    write_line_index(ctx, mission.mission_id, index)
    return Plan.for_split(split, lines)


def needs_text_input(config: MissionConfig) -> bool:
    """Splitting by lines (or chunks cut at lines), and the built-in apps, need text; an argv
    app on a count split may take anything."""
    split_by_lines = isinstance(config.split, LinesSplit | BytesSplit)
    return split_by_lines or not isinstance(config.app, ArgvApp)


def looks_binary(start: bytes) -> bool:
    if b"\x00" in start:
        return True
    try:
        start.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start < len(start) - 3  # a character cut at the end of the sample is fine
    return False


def _input_start(ctx: Context, mission: Mission, pin: dict[str, str]) -> bytes:
    response = ctx.aws.s3.get_object(
        Bucket=mission.bucket_of_input(ctx.settings.source_bucket),
        Key=mission.input_key,
        Range=f"bytes=0-{SNIFF_BYTES - 1}",
        **pin,
    )
    return response["Body"].read()


def count_lines(
    ctx: Context, mission: Mission, pin: dict[str, str], lines_per_slice: int, max_slices: int
) -> LineOffsets:
    """Lines of the input, streamed once (a last line without a newline counts), with the byte
    offset where each slice of `lines_per_slice` lines begins (the first `max_slices`)."""
    bucket = mission.bucket_of_input(ctx.settings.source_bucket)
    body = ctx.aws.s3.get_object(Bucket=bucket, Key=mission.input_key, **pin)["Body"]
    index = LineOffsets(lines_per_slice, max_slices)
    for chunk in body.iter_chunks(chunk_size=1024 * 1024):
        index.feed(chunk)
    return index


def write_line_index(ctx: Context, mission_id: str, index: LineOffsets) -> None:
    """The slices' offsets where the workers read them (before RUNNING: no worker reads it
    earlier). A planner that takes over writes the very same bytes again."""
    ctx.aws.s3.put_object(
        Bucket=ctx.settings.result_bucket,
        Key=line_index_key(mission_id),
        Body=encode_offsets(index.slice_offsets()),
        ContentType="application/octet-stream",
    )


def _input_head(ctx: Context, mission: Mission) -> dict[str, Any] | None:
    if not mission.input_key:
        return None  # fed by another mission: not bound yet
    bucket = mission.bucket_of_input(ctx.settings.source_bucket)
    try:
        return ctx.aws.s3.head_object(Bucket=bucket, Key=mission.input_key)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in _MISSING:
            return None
        raise
