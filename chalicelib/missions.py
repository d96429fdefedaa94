"""The mission API ("MissionCfg"): submit, describe, list and cancel; plain functions returning
dicts (the JSON bodies), raising `chalicelib.errors.ApiError`s for the answers that are not 2xx."""

from __future__ import annotations

import secrets
from collections import Counter
from datetime import datetime
from typing import Any

from chalicelib.capacity import terminate_mission_instances
from chalicelib.config import parse_mission_config
from chalicelib.context import Context
from chalicelib.domain import Mission, Transaction, utc
from chalicelib.events import send_start_request
from chalicelib.idempotency import answer_once
from chalicelib.observability import bind_mission, logger
from chalicelib.results import settle
from chalicelib.states import MissionStatus, TransactionStatus

LIST_LIMIT = 100
PAGE_LIMIT = 1000


def new_mission_id(now: float) -> str:
    """Sortable by creation time, unguessable enough to be a handle."""
    return f"m-{utc(now):%Y%m%d%H%M%S}-{secrets.token_hex(4)}"


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
        ctx.aws.dynamodb,
        idempotency_key,
        submitted_by or "",
        body,
        lambda: _register(ctx, body, submitted_by),
        lambda_context,
    )


def _register(ctx: Context, body: bytes | str | None, submitted_by: str | None) -> dict[str, Any]:
    config = parse_mission_config(body, ctx.settings)
    now = ctx.clock()
    mission = Mission(
        mission_id=new_mission_id(now),
        name=config.name,
        status=MissionStatus.AWAITING_INPUT,
        config=config,
        input_key=config.input,
        created_at=utc(now),
        submitted_by=submitted_by,
    )
    ctx.store.missions.create(mission)
    bind_mission(mission.mission_id)
    # The scheduler checks whether the input is already there; if not, the upload's event
    # starts the mission.
    send_start_request(ctx, mission.mission_id)
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
    mission = ctx.store.missions.get(mission_id)
    counts = Counter(t.status for t in ctx.store.transactions.of(mission_id))
    # Never-claimed transactions have no item yet: they are PENDING by construction.
    counts[TransactionStatus.PENDING] += mission.total - sum(counts.values())
    return {
        **mission_summary(ctx, mission),
        "transactions": {s.value: counts.get(s, 0) for s in TransactionStatus}
        | {"total": mission.total},
        "instances": mission.instances,
        "instance_seconds": round(mission.instance_seconds, 3),
        "estimated_cost_usd": round(mission.estimated_cost, 6),
        "launch_errors": mission.launch_errors,
        "input": {
            "key": mission.input_key,
            "etag": mission.input_etag,
            "bytes": mission.input_bytes,
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
    }


def cancel(ctx: Context, mission_id: str) -> dict[str, Any]:
    """Stop a mission: no new claims (claims need RUNNING), its instances terminated, one email.

    Raises NotFound, or Conflict if the mission already finished.
    """
    mission = ctx.store.missions.get(mission_id)
    bind_mission(mission_id)
    ctx.store.missions.cancel(mission, ctx.clock())
    terminated = terminate_mission_instances(ctx.aws.ec2, mission_id)
    logger.info("mission cancelled", extra={"instances_terminated": len(terminated)})
    settle(ctx, mission_id)  # sends the CANCELLED email
    return {
        **mission_summary(ctx, ctx.store.missions.get(mission_id)),
        "instances_terminated": len(terminated),
    }


def list_missions(ctx: Context) -> dict[str, Any]:
    missions = ctx.store.missions.newest(LIST_LIMIT)
    return {"missions": [mission_summary(ctx, m) for m in missions]}


def transactions(
    ctx: Context, mission_id: str, after: int = -1, limit: int = PAGE_LIMIT
) -> dict[str, Any]:
    """A page of transactions after index `after`; never-claimed ones are shown from the plan.

    Raises NotFound for an unknown mission (rather than an empty list).
    """
    mission = ctx.store.missions.get(mission_id)
    first, last = after + 1, min(after + limit, mission.total - 1)
    if mission.total == 0 or first > last:
        return {"transactions": [], "next_after": None}
    claimed = {t.index: t for t in ctx.store.transactions.of(mission_id, first, last)}
    page = [
        claimed.get(i) or Transaction.pending(mission_id, mission.plan.slice(i))
        for i in range(first, last + 1)
    ]
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
