"""The mission API ("MissionCfg"): submit, describe and list; plain functions returning dicts."""

from __future__ import annotations

import secrets
from collections import Counter
from datetime import datetime
from typing import Any

from chalicelib import aws
from chalicelib.capacity import terminate_mission_instances
from chalicelib.config import MissionConfig, parse_mission_config
from chalicelib.context import Context
from chalicelib.events import start_request_body
from chalicelib.idempotency import answer_once
from chalicelib.models import MissionModel, TransactionModel
from chalicelib.observability import bind_mission, logger
from chalicelib.planning import Plan, Slice
from chalicelib.results import settle
from chalicelib.states import MissionStatus, TransactionStatus
from chalicelib.store import utcnow

LIST_LIMIT = 100
PAGE_LIMIT = 1000


def new_mission_id(now: float) -> str:
    """Sortable by creation time, unguessable enough to be a handle."""
    return f"m-{utcnow(now):%Y%m%d%H%M%S}-{secrets.token_hex(4)}"


def submit(
    ctx: Context,
    body: bytes | str | None,
    submitted_by: str | None = None,
    idempotency_key: str | None = None,
    lambda_context: Any = None,
) -> dict[str, Any]:
    """Validate and store a config; ask the scheduler to start it if the input is already in.

    `submitted_by` is the authenticated caller (chalicelib.auth), recorded with the mission.
    With an `idempotency_key`, a retried request gets the first answer (chalicelib.idempotency).
    Raises ConfigInvalid (nothing written), InputBusy (another mission awaits that input) or
    Conflict (the key was used with another body, or its first request is still running).
    """
    return answer_once(
        ctx.settings.idempotency_table,
        idempotency_key,
        submitted_by or "",
        body,
        lambda: _register(ctx, body, submitted_by),
        lambda_context,
    )


def _register(ctx: Context, body: bytes | str | None, submitted_by: str | None) -> dict[str, Any]:
    config = parse_mission_config(body, ctx.settings)
    now = ctx.clock()
    mission = MissionModel(
        new_mission_id(now),
        name=config.name,
        status=MissionStatus.AWAITING_INPUT.value,
        config_json=config.model_dump_json(),
        input_key=config.input,
        notify=config.notify,
        submitted_by=submitted_by,
        created_at=utcnow(now),
    )
    ctx.store.create_mission(mission)
    bind_mission(mission.mission_id)
    # The scheduler checks whether the input is already there; if not, the upload's event
    # starts the mission. Going through the queue keeps all planning in light_scheduler.
    aws.sqs().send_message(
        QueueUrl=aws.queue_url(ctx.settings.source_queue),
        MessageBody=start_request_body(mission.mission_id),
    )
    logger.info("mission registered", extra={"input_key": config.input})
    return {
        **mission_summary(ctx, mission),
        "upload": {
            "bucket": ctx.settings.source_bucket,
            "key": config.input,
            "uri": f"s3://{ctx.settings.source_bucket}/{config.input}",
        },
    }


def describe(ctx: Context, mission_id: str) -> dict[str, Any]:
    mission = ctx.store.get_mission(mission_id)
    counts = Counter(t.status for t in ctx.store.transactions(mission_id))
    # Never-claimed transactions have no item yet: they are PENDING by construction.
    counts[TransactionStatus.PENDING.value] += int(mission.n_total) - sum(counts.values())
    config = MissionConfig.model_validate_json(mission.config_json)
    return {
        **mission_summary(ctx, mission),
        "transactions": {s.value: counts.get(s.value, 0) for s in TransactionStatus}
        | {"total": int(mission.n_total)},
        "instances": int(mission.n_instances or 0),
        "instance_seconds": round(float(mission.instance_seconds or 0), 3),
        "estimated_cost_usd": round(float(mission.estimated_cost or 0), 6),
        "launch_errors": mission.launch_errors,
        "input": {
            "key": mission.input_key,
            "etag": mission.input_etag,
            "bytes": mission.input_bytes,
        },
        "config": config.model_dump(mode="json"),
    }


def mission_summary(ctx: Context, mission: MissionModel) -> dict[str, Any]:
    result = mission.result_key
    return {
        "mission_id": mission.mission_id,
        "name": mission.name,
        "status": mission.status,
        "error": mission.error,
        "submitted_by": mission.submitted_by,
        "created_at": _iso(mission.created_at),
        "started_at": _iso(mission.started_at),
        "running_at": _iso(mission.running_at),
        "finished_at": _iso(mission.finished_at),
        "notified_at": _iso(mission.notified_at),
        "result": f"s3://{ctx.settings.result_bucket}/{result}" if result else None,
    }


def cancel(ctx: Context, mission_id: str) -> dict[str, Any]:
    """Stop a mission: no new claims (claims need RUNNING), its instances terminated, one email.

    Raises NotFound, or Conflict if the mission already finished.
    """
    mission = ctx.store.get_mission(mission_id)
    bind_mission(mission_id)
    ctx.store.cancel_mission(mission, ctx.clock())
    terminated = terminate_mission_instances(aws.ec2(), mission_id)
    logger.info("mission cancelled", extra={"instances_terminated": len(terminated)})
    settle(ctx, mission_id)  # sends the CANCELLED email
    return {
        **mission_summary(ctx, ctx.store.get_mission(mission_id)),
        "instances_terminated": len(terminated),
    }


def list_missions(ctx: Context) -> dict[str, Any]:
    missions = ctx.store.list_missions(LIST_LIMIT)
    return {"missions": [mission_summary(ctx, m) for m in missions]}


def transactions(
    ctx: Context, mission_id: str, after: int = -1, limit: int = PAGE_LIMIT
) -> dict[str, Any]:
    """A page of transactions after index `after`; never-claimed ones are shown from the plan.

    Raises NotFound for an unknown mission (rather than an empty list).
    """
    mission = ctx.store.get_mission(mission_id)
    total = int(mission.n_total)
    first, last = after + 1, min(after + limit, total - 1)
    if total == 0 or first > last:
        return {"transactions": [], "next_after": None}
    claimed = {int(t.index): t for t in ctx.store.transactions(mission_id, first, last)}
    plan = Plan.for_split(
        MissionConfig.model_validate_json(mission.config_json).split, mission.n_lines
    )
    page = [
        transaction_view(claimed[i]) if i in claimed else pending_view(plan.slice(i))
        for i in range(first, last + 1)
    ]
    return {"transactions": page, "next_after": last if last < total - 1 else None}


def pending_view(s: Slice) -> dict[str, Any]:
    return {
        "index": s.index,
        "status": TransactionStatus.PENDING.value,
        "start": s.start,
        "end": s.end,
        "attempts": 0,
        "lease_owner": None,
        "exit_code": None,
        "error": None,
        "started_at": None,
        "finished_at": None,
        "run_seconds": None,
    }


def transaction_view(t: TransactionModel) -> dict[str, Any]:
    return {
        "index": int(t.index),
        "status": t.status,
        "start": int(t.start),
        "end": int(t.end),
        "attempts": int(t.attempts or 0),
        "lease_owner": t.lease_owner,
        "exit_code": None if t.exit_code is None else int(t.exit_code),
        "error": t.error,
        "started_at": _iso(t.started_at),
        "finished_at": _iso(t.finished_at),
        "run_seconds": None if t.run_seconds is None else float(t.run_seconds),
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
