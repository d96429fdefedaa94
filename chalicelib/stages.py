"""Missions that feed missions: a mission's reduce stage, and downstream missions.

Both are missions of their own, with their own machines, attempts and deadlines, whose input is
another mission's output in the result bucket:

- a **reduce** (`"reduce"` in a config) is a one-transaction mission (`reduce_id`), created when
  its mission has every transaction succeeded and its parts merged (RUNNING -> REDUCING). Its
  input is that concatenation; its output becomes the mission's result (REDUCING -> SUCCEEDED),
  its failure fails the mission with the reason;
- a **downstream** mission (`"input": {"mission": ID}`) waits in AWAITING_INPUT until its
  upstream SUCCEEDS, then plans over the upstream's result; if the upstream fails or is
  cancelled, it fails, saying so.

What starts a waiting mission is a start request, sent when its upstream moves on (and by the
sweeper, every sweep, while it waits); binding the input is a conditional write and planning
begins once (`Store.begin_planning`), however many requests arrive.
"""

from __future__ import annotations

from chalicelib.config import CountSplit, Interval, MissionConfig, UpstreamInput
from chalicelib.context import Context
from chalicelib.domain import Mission, Usage, reduce_id, utc
from chalicelib.events import send_start_request
from chalicelib.observability import logger
from chalicelib.states import MissionStatus, TransactionStatus
from chalicelib.store import NotFound
from chalicelib.usage import account_alive_instances

M = MissionStatus
MAX_NAME = 128
REDUCE_SUFFIX = " (reduce)"


def reduce_config(mission: Mission) -> MissionConfig:
    """The reduce stage as a mission: one transaction over the merged parts, with the reduce's
    own app, machines, attempts, exit rules and timeouts. No email of its own (its mission's
    says how it went) and no budget of its own (its mission's covers it)."""
    reduce = mission.config.reduce
    if reduce is None:
        raise ValueError(f"mission {mission.mission_id} has no reduce")
    return MissionConfig(
        name=mission.name[: MAX_NAME - len(REDUCE_SUFFIX)] + REDUCE_SUFFIX,
        input=UpstreamInput(mission=mission.mission_id),
        split=CountSplit(mode="count", interval=Interval(start=0, end=1), count=1),
        app=reduce.app,
        instances=reduce.instances,
        max_attempts=reduce.max_attempts,
        exit_rules=reduce.exit_rules,
        timeouts=reduce.timeouts,
    )


def reduce_mission(mission: Mission, now: float) -> Mission:
    return Mission(
        mission_id=reduce_id(mission.mission_id),
        name=reduce_config(mission).name,
        status=M.AWAITING_INPUT,
        config=reduce_config(mission),
        input_key="",
        created_at=utc(now),
        submitted_by=mission.submitted_by,
        reduce_of=mission.mission_id,
    )


def advance_reduce(ctx: Context, mission: Mission) -> None:
    """Move a REDUCING mission on: create its reduce stage if it is not there yet (and ask for
    it to start), or, once that ended, end the mission with its output or its failure, its
    stage's usage added to its own (its own instances still alive accounted just before)."""
    stage_id = reduce_id(mission.mission_id)
    try:
        stage = ctx.store.missions.get(stage_id)
    except NotFound:
        created = reduce_mission(mission, ctx.clock())
        ctx.store.missions.create_reduce(created)
        send_start_request(ctx, stage_id)
        logger.info("reduce stage created", extra={"reduce": stage_id})
        return
    if not stage.terminal:
        if stage.status is M.AWAITING_INPUT:
            send_start_request(ctx, stage_id)  # a lost request costs a sweep, not the mission
        return
    if stage.status is M.SUCCEEDED:
        status, result, error = M.SUCCEEDED, stage.result_key, None
    else:
        status, result, error = M.FAILED, None, f"the reduce failed: {reduce_failure(ctx, stage)}"
    used = Usage(instance_seconds=stage.instance_seconds, estimated_cost=stage.estimated_cost)
    account_alive_instances(ctx, mission)
    ended = ctx.store.missions.finish(
        mission, status, result, used, ctx.clock(), error=error, instances=stage.instances
    )
    if ended:
        logger.info("reduce stage ended", extra={"reduce": stage_id, "status": status.value})


def reduce_failure(ctx: Context, stage: Mission) -> str:
    """Why a reduce stage did not succeed: its mission's reason, else its transaction's."""
    if stage.status is M.CANCELLED:
        return f"it was cancelled ({stage.error or 'by request'})"
    if stage.error:
        return stage.error
    for txn in ctx.store.transactions.of(stage.mission_id):
        if txn.status is TransactionStatus.FAILED:
            code = "" if txn.exit_code is None else f", exit code {txn.exit_code}"
            return f"{txn.attempts} attempt(s){code}: {txn.error or 'no error text'}"
    return "no reason recorded"


def bind_input(ctx: Context, mission: Mission) -> bool:
    """For a mission waiting for another's result: bind that result as its input once it is
    there (True: plan it now). If the upstream ended without one, fail the mission, saying why
    (the caller settles it: its email). False while it waits, or once it failed."""
    upstream_id = mission.upstream
    if upstream_id is None or mission.status is not M.AWAITING_INPUT:
        return mission.status is M.AWAITING_INPUT
    try:
        upstream = ctx.store.missions.get(upstream_id)
    except NotFound:
        _fail_waiting(ctx, mission, f"its upstream mission {upstream_id} does not exist")
        return False
    if mission.reduce_of is not None:  # a reduce reads its mission's merged parts
        ready, key = upstream.status is M.REDUCING, upstream.concatenation_key
        ended = upstream.terminal
    else:
        ready, key = upstream.status is M.SUCCEEDED, upstream.result_key
        ended = upstream.terminal and not ready
    if ready and key:
        ctx.store.missions.bind_upstream_result(mission.mission_id, ctx.settings.result_bucket, key)
        return True
    if ended:
        what = "its mission" if mission.reduce_of is not None else "its upstream mission"
        reason = f"{what} {upstream_id} {upstream.status.value.lower()}"
        _fail_waiting(ctx, mission, f"{reason}: {upstream.error}" if upstream.error else reason)
    return False


def _fail_waiting(ctx: Context, mission: Mission, reason: str) -> None:
    if ctx.store.missions.expire_awaiting(mission, reason, ctx.clock()):
        logger.warning("waiting mission failed", extra={"reason": reason})


def upstream_moved(ctx: Context, mission: Mission) -> bool:
    """Whether a waiting mission's upstream has moved to where a start request decides: it
    ended (or is gone), or, for a reduce, its mission began reducing."""
    if mission.upstream is None:
        return False
    try:
        upstream = ctx.store.missions.get(mission.upstream)
    except NotFound:
        return True
    return upstream.terminal or (mission.reduce_of is not None and upstream.status is M.REDUCING)


def release_downstream(ctx: Context, mission: Mission) -> None:
    """A mission ended: ask each mission fed by its result to start (or to fail with it)."""
    for downstream_id in sorted(mission.downstream):
        send_start_request(ctx, downstream_id)
