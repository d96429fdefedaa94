"""The mission API ("MissionCfg"): submit, describe, list and cancel; plain functions returning
dicts (the JSON bodies), raising `chalicelib.errors.ApiError`s for the answers that are not 2xx."""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from chalicelib.auth import LOCAL_CALLER, Caller
from chalicelib.config import (
    MISSION_ID_PATTERN,
    ConfigInvalid,
    FieldError,
    MissionConfig,
    StageInput,
    UpstreamInput,
    parse_mission_config,
)
from chalicelib.context import Context
from chalicelib.domain import Mission, Pipeline, Transaction, Usage, reduce_id, utc
from chalicelib.events import send_start_request
from chalicelib.idempotency import answer_once
from chalicelib.observability import bind_mission, logger
from chalicelib.results import cancel_settled, send_report, stop_instances, transaction_counts
from chalicelib.states import MissionStatus, shown_status
from chalicelib.store import Conflict, NotFound
from chalicelib.usage import account_alive_instances

LIST_LIMIT = 100
PAGE_LIMIT = 1000


class InputNotYours(ConfigInvalid):
    """A 403: the config names an input outside the caller's own prefix of the source bucket."""

    STATUS_CODE = 403
    summary = "input not yours"


def caller_view(caller: Caller) -> dict[str, Any]:
    """GET /me: who the API takes the caller to be, and where its inputs go."""
    return {
        "principal": caller.principal,
        "operator": caller.operator,
        "input_prefix": caller.input_prefix,
    }


def visible(ctx: Context, mission_id: str, caller: Caller) -> Mission:
    """The mission, if `caller` owns it or is an operator; NotFound (a 404) otherwise.

    A 404 rather than a 403, so a caller learns nothing about missions it does not own, not even
    whether an id exists.
    """
    if not MISSION_ID.match(mission_id):  # never read: DynamoDB refuses keys over 2,048 bytes
        raise NotFound(f"no mission {mission_id!r}")
    mission = ctx.store.missions.get(mission_id)
    if not caller.owns(mission.submitted_by):
        raise NotFound(f"no mission {mission_id!r}")
    return mission


MISSION_ID = re.compile(MISSION_ID_PATTERN)  # what new_mission_id makes (and its reduce's)


def new_mission_id(now: float) -> str:
    """Sortable by creation time, unguessable enough to be a handle."""
    return f"m-{utc(now):%Y%m%d%H%M%S}-{secrets.token_hex(4)}"


def submit(
    ctx: Context,
    body: bytes | str | None,
    caller: Caller | None = None,
    idempotency_key: str | None = None,
    lambda_context: Any = None,
) -> dict[str, Any]:
    """Validate and store a config; ask the scheduler to start it if the input is already in.

    `caller` is the authenticated caller (chalicelib.auth): it owns the mission, and may bind
    only inputs under its own prefix (InputNotYours, a 403, otherwise).
    With an `idempotency_key`, a retried request gets the first answer (chalicelib.idempotency).
    Raises ConfigInvalid (nothing written), InputBusy (another mission awaits that input) or
    Conflict (the key was used with another body, or its first request is still running).
    """
    caller = caller or Caller(LOCAL_CALLER)
    # Checked before the idempotency record is written: a refused config writes nothing at all.
    config = parse_mission_config(body, ctx.settings)
    if isinstance(config.input, StageInput):
        reason = "names a stage: only a pipeline's stages can (POST /pipelines)"
        raise ConfigInvalid([FieldError("input.stage", reason)])
    check_input(ctx, config, caller, "input")
    register = functools.partial(_register, ctx, config, caller)
    return submitted_once(ctx, body, caller, idempotency_key, lambda_context, register)


def submitted_once(
    ctx: Context,
    body: bytes | str | None,
    caller: Caller,
    idempotency_key: str | None,
    lambda_context: Any,
    register: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """`register()`'s answer, or with an Idempotency-Key the first answer to this body."""
    return answer_once(
        ctx.settings.idempotency_table,
        ctx.aws.dynamodb,
        idempotency_key,
        caller.principal,
        body,
        register,
        lambda_context,
    )


def check_input(ctx: Context, config: MissionConfig, caller: Caller, field: str) -> None:
    """An upload's key must be in the caller's folder (InputNotYours, a 403); another mission
    as the input must be one the caller may see (a 400 naming the field, as for a mission that
    does not exist: nothing leaks)."""
    if isinstance(config.input, UpstreamInput):
        try:
            visible(ctx, config.input.mission, caller)
        except NotFound:
            reason = f"no mission {config.input.mission!r} (of yours) to take the result of"
            raise ConfigInvalid([FieldError(f"{field}.mission", reason)]) from None
        return
    if isinstance(config.input, str) and not caller.may_bind(config.input):
        reason = (
            f"{config.input!r} is outside your folder of the source bucket: upload your input"
            f" under {caller.input_prefix!r} and name that key"
        )
        raise InputNotYours([FieldError(field, reason)])


def new_mission(
    mission_id: str,
    config: MissionConfig,
    caller: Caller,
    now: float,
    pipeline: Pipeline | None = None,
) -> Mission:
    """A mission as submitted: waiting for its upload, or for its upstream's result (its input
    key is bound when that result is there)."""
    return Mission(
        mission_id=mission_id,
        name=config.name,
        status=MissionStatus.AWAITING_INPUT,
        config=config,
        input_key=config.input if isinstance(config.input, str) else "",
        created_at=utc(now),
        submitted_by=caller.principal,
        pipeline=pipeline,
    )


def upload_view(ctx: Context, mission: Mission) -> dict[str, Any] | None:
    """Where the owner uploads the input; None for a mission fed by another's result."""
    if not mission.binds_input_key:
        return None
    bucket = ctx.settings.source_bucket
    return {"bucket": bucket, "key": mission.input_key, "uri": f"s3://{bucket}/{mission.input_key}"}


def _register(ctx: Context, config: MissionConfig, caller: Caller) -> dict[str, Any]:
    now = ctx.clock()
    mission = new_mission(new_mission_id(now), config, caller, now)
    ctx.store.missions.create(mission)
    bind_mission(mission.mission_id)
    # The scheduler checks whether the input is already there (or its upstream's result); if
    # not, the upload's event (or the upstream's end) starts the mission.
    send_start_request(ctx, mission.mission_id)
    logger.info("mission registered", extra={"input_key": mission.input_key})
    return {**mission_summary(ctx, mission), "upload": upload_view(ctx, mission)}


def describe(ctx: Context, mission_id: str, caller: Caller) -> dict[str, Any]:
    mission = visible(ctx, mission_id, caller)
    return {
        **mission_summary(ctx, mission),
        # The very counts the email shows (for a cancelled mission: final, and no query).
        "transactions": transaction_counts(mission),
        "instances": mission.instances,
        "instance_seconds": round(mission.instance_seconds, 3),
        "estimated_cost_usd": round(mission.estimated_cost, 6),
        "launch_errors": mission.launch_errors,
        "input": {
            "bucket": mission.bucket_of_input(ctx.settings.source_bucket),
            "key": mission.input_key or None,
            "etag": mission.input_etag,
            "bytes": mission.input_bytes,
            "mission": mission.upstream,
        },
        "config": mission.config.model_dump(mode="json"),
    }


def mission_summary(ctx: Context, mission: Mission) -> dict[str, Any]:
    result = mission.result_key
    return {
        "mission_id": mission.mission_id,
        "name": mission.name,
        "status": mission.status.value,
        "error": mission.error,
        "submitted_by": mission.submitted_by,
        "created_at": _iso(mission.created_at),
        "started_at": _iso(mission.started_at),
        "running_at": _iso(mission.running_at),
        "finished_at": _iso(mission.finished_at),
        "notified_at": _iso(mission.notified_at),
        "result": f"s3://{ctx.settings.result_bucket}/{result}" if result else None,
        "reduce": reduce_id(mission.mission_id) if mission.config.reduce is not None else None,
        "reduce_of": mission.reduce_of,
        "pipeline": mission.pipeline.pipeline_id if mission.pipeline else None,
    }


def cancel(ctx: Context, mission_id: str, caller: Caller) -> dict[str, Any]:
    """Stop a mission: no new claims (claims need RUNNING), nothing counted from now on, its
    instances terminated and accounted, one email once its figures are final.

    O(instances), never O(transactions): the leases its workers held are settled by the workers
    themselves (they look at their mission every heartbeat period) or by the sweeper, which
    also sends the email (`cancel_settled`); a mission that never began planning is mailed now.
    Raises NotFound (also for a mission the caller does not own), or Conflict if the mission
    already finished.
    """
    mission = visible(ctx, mission_id, caller)
    bind_mission(mission_id)
    account_alive_instances(ctx, mission)  # by their age, before their agents are refused
    ctx.store.missions.cancel(mission, ctx.clock(), by=caller.principal)
    if mission.status is MissionStatus.REDUCING:
        _cancel_reduce(ctx, mission, caller)
    cancelled = ctx.store.missions.get(mission_id)
    terminated = stop_instances(ctx, cancelled)
    logger.info("mission cancelled", extra={"instances_terminated": len(terminated)})
    if cancel_settled(ctx, cancelled, busy=True):
        send_report(ctx, ctx.store.missions.get(mission_id))
    return {
        **mission_summary(ctx, ctx.store.missions.get(mission_id)),
        "instances_terminated": len(terminated),
    }


def _cancel_reduce(ctx: Context, mission: Mission, caller: Caller) -> None:
    """A mission cancelled while it reduced: its reduce stage is cancelled with it."""
    try:
        stage = ctx.store.missions.get(reduce_id(mission.mission_id))
    except NotFound:
        return  # not created yet: it never will be (its mission is no longer REDUCING)
    if stage.terminal:
        return
    try:
        ctx.store.missions.cancel(stage, ctx.clock(), by=caller.principal)
    except Conflict:
        return  # it ended meanwhile
    stop_instances(ctx, ctx.store.missions.get(stage.mission_id))
    # Its machines stopped and accounted: what the reduce used is its mission's, as it would
    # have been at its end.
    used = ctx.store.missions.get(stage.mission_id)
    ctx.store.missions.add_stage_usage(
        mission.mission_id,
        Usage(instance_seconds=used.instance_seconds, estimated_cost=used.estimated_cost),
    )


def list_missions(ctx: Context, caller: Caller) -> dict[str, Any]:
    """The newest missions the caller may see: its own, or every one for an operator."""
    owner = None if caller.operator else caller.principal
    missions = ctx.store.missions.newest(LIST_LIMIT, submitted_by=owner)
    return {"missions": [mission_summary(ctx, m) for m in missions]}


def transactions(
    ctx: Context, mission_id: str, caller: Caller, after: int = -1, limit: int = PAGE_LIMIT
) -> dict[str, Any]:
    """A page of transactions after index `after`; never-claimed ones are shown from the plan.

    Raises NotFound for an unknown mission, or one the caller does not own (rather than an
    empty list).
    """
    mission = visible(ctx, mission_id, caller)
    first, last = after + 1, min(after + limit, mission.total - 1)
    if mission.total == 0 or first > last:
        return {"transactions": [], "next_after": None}
    claimed = {
        i: block
        for block in ctx.store.transactions.covering(mission_id, first, last)
        for i in block.indexes
    }
    page = [
        claimed[i].member(mission.plan.slice(i))
        if i in claimed
        else Transaction.pending(mission_id, mission.plan.slice(i))
        for i in range(first, last + 1)
    ]
    # In a cancelled mission, what did not count before the cancel is CANCELLED.
    page = [replace(t, status=shown_status(t.status, t.counted, mission.status)) for t in page]
    return {
        "transactions": [transaction_view(t) for t in page],
        "next_after": last if last < mission.total - 1 else None,
    }


def transaction_view(t: Transaction) -> dict[str, Any]:
    return {
        "index": t.index,
        "status": t.status.value,
        "start": t.start,
        "end": t.end,
        "attempts": t.attempts,
        "lease_owner": t.lease_owner,
        "exit_code": t.exit_code,
        "error": t.error,
        "started_at": _iso(t.started_at),
        "finished_at": _iso(t.finished_at),
        "run_seconds": t.run_seconds,
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
