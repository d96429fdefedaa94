"""The sweeper (a Chalice `schedule`): what no event will do by itself.

- a transaction whose lease expired (its worker died, or was interrupted without handing back)
  goes back to the queue, or, out of attempts, is reported failed through a failure marker;
- a mission past its deadline is failed, its instances terminated, its email sent (so is one
  whose input never arrived);
- a mission with work left and no live worker gets new capacity;
- a planner that died is replaced (its start request is sent again);
- an email whose sender died is sent.

Every step is a conditional write or an idempotent call, so two sweeps at once, or a sweep
racing the workers, change nothing twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta

from chalicelib import aws
from chalicelib.capacity import launch_workers, mission_instances, terminate_mission_instances
from chalicelib.config import MissionConfig, slots_per_instance
from chalicelib.context import Context
from chalicelib.events import start_request_body
from chalicelib.layout import failure_key
from chalicelib.models import MissionModel, TransactionModel
from chalicelib.observability import bind_mission, logger
from chalicelib.planning import Plan
from chalicelib.results import settle
from chalicelib.states import (
    TERMINAL_MISSION,
    MissionStatus,
    TransactionStatus,
    after_failed_attempt,
)


@dataclass
class SweepReport:
    requeued: int = 0
    failed: int = 0
    timed_out: list[str] = field(default_factory=list)
    relaunched: dict[str, int] = field(default_factory=dict)
    replanned: list[str] = field(default_factory=list)
    mailed: list[str] = field(default_factory=list)


def sweep(ctx: Context) -> SweepReport:
    report = SweepReport()
    for mission in ctx.store.missions_needing_care():
        bind_mission(mission.mission_id)
        status = MissionStatus(mission.status)
        if status is MissionStatus.AWAITING_INPUT:
            _expire_if_input_never_came(ctx, mission, report)
        elif status is MissionStatus.PLANNING:
            _replan_if_abandoned(ctx, mission, report)
        elif status is MissionStatus.RUNNING:
            _care_for_running(ctx, mission, report)
        elif status in TERMINAL_MISSION and mission.notified_at is None:
            lease = mission.notify_lease_until
            if lease is None or lease < ctx.clock():
                settle(ctx, mission.mission_id)
                report.mailed.append(mission.mission_id)
    bind_mission(None)
    return report


def _care_for_running(ctx: Context, mission: MissionModel, report: SweepReport) -> None:
    config = MissionConfig.model_validate_json(mission.config_json)
    now = ctx.clock()
    began = mission.running_at or mission.created_at
    deadline = began + timedelta(seconds=config.timeouts.mission_seconds)
    if now > deadline.timestamp():
        reason = f"timed out: still running after {config.timeouts.mission_seconds} s"
        if ctx.store.fail_mission(mission.mission_id, reason, now):
            terminate_mission_instances(aws.ec2(), mission.mission_id)
            report.timed_out.append(mission.mission_id)
            logger.warning("mission timed out", extra={"reason": reason})
        settle(ctx, mission.mission_id)
        return
    leased = ctx.store.leased_transactions(mission.mission_id)
    for txn in leased:
        if txn.lease_expires_at is not None and txn.lease_expires_at < now:
            _take_back(ctx, mission, config, txn, now, report)
    done = int(mission.n_succeeded) + int(mission.n_failed)
    if not leased and done < int(mission.n_total) and not ctx.store.has_work_left(mission):
        plan = Plan.for_split(config.split, mission.n_lines)
        lost = ctx.store.requeue_lost_claims(mission, plan.slice, now)
        report.requeued += len(lost)
    if ctx.store.has_work_left(mission):
        alive = mission_instances(aws.ec2(), mission.mission_id, ["pending", "running"])
        # No live worker: the work is stranded. A launch that came short (partial fulfilment,
        # InsufficientInstanceCapacity) is topped up too. And a retry nobody has claimed for two
        # lease periods means the live instances are not working (hung, or draining): relaunch
        # as if there were none.
        oldest = ctx.store.oldest_retry_rank(mission.mission_id)
        stranded = oldest is not None and now * 1000 - oldest > 2000 * ctx.settings.lease_seconds
        if not alive or mission.launch_errors or stranded:
            _relaunch(ctx, mission, config, 0 if stranded else len(alive), report)


def _take_back(
    ctx: Context,
    mission: MissionModel,
    config: MissionConfig,
    txn: TransactionModel,
    now: float,
    report: SweepReport,
) -> None:
    reason = f"lease of {txn.lease_owner} expired: worker lost"
    attempts = int(txn.attempts)
    if after_failed_attempt(attempts, config.max_attempts) is TransactionStatus.PENDING:
        if ctx.store.take_back_expired(txn, now, reason, requeue=True):
            report.requeued += 1
            logger.warning("expired lease: transaction requeued", extra={"index": int(txn.index)})
        return
    # Out of attempts: report it like a worker would, through a failure marker (written first,
    # so a sweeper that dies here leaves the lease expired and the next sweep writes it again).
    marker = {"exit_code": None, "error": reason, "attempts": attempts, "timed_out": False}
    aws.s3().put_object(
        Bucket=ctx.settings.result_bucket,
        Key=failure_key(mission.mission_id, int(txn.index)),
        Body=json.dumps(marker).encode(),
    )
    if ctx.store.take_back_expired(txn, now, reason, requeue=False):
        report.failed += 1
        logger.warning("expired lease, out of attempts", extra={"index": int(txn.index)})


def _relaunch(
    ctx: Context, mission: MissionModel, config: MissionConfig, alive: int, report: SweepReport
) -> None:
    """Ask for the capacity the remaining work needs (a fresh client token per round)."""
    remaining = int(mission.n_total) - int(mission.n_succeeded) - int(mission.n_failed)
    cap = min(config.instances.max_instances, ctx.settings.max_instances)
    wanted = max(1, min(cap, -(-remaining // slots_per_instance(config.instances)))) - alive
    if wanted <= 0:
        return
    round_ = int(mission.relaunches or 0) + 1
    launch = launch_workers(
        aws.ec2(),
        ctx.settings,
        mission.mission_id,
        config.instances,
        wanted,
        token_suffix=f"r{round_}",
    )
    ctx.store.record_relaunch(
        mission.mission_id, len(launch.instance_ids), "; ".join(launch.errors) or None
    )
    report.relaunched[mission.mission_id] = len(launch.instance_ids)
    logger.warning(
        "work left and no live worker: capacity relaunched",
        extra={"instances": len(launch.instance_ids), "round": round_},
    )


def _expire_if_input_never_came(ctx: Context, mission: MissionModel, report: SweepReport) -> None:
    config = MissionConfig.model_validate_json(mission.config_json)
    waited = ctx.clock() - mission.created_at.timestamp()
    if waited <= config.timeouts.mission_seconds:
        return
    where = f"s3://{ctx.settings.source_bucket}/{mission.input_key}"
    reason = f"the input {where} never arrived within {config.timeouts.mission_seconds} s"
    if ctx.store.expire_awaiting(mission, reason, ctx.clock()):
        report.timed_out.append(mission.mission_id)
        settle(ctx, mission.mission_id)


def _replan_if_abandoned(ctx: Context, mission: MissionModel, report: SweepReport) -> None:
    lease = mission.planning_lease_until
    if lease is not None and lease < ctx.clock():
        aws.sqs().send_message(
            QueueUrl=aws.queue_url(ctx.settings.source_queue),
            MessageBody=start_request_body(mission.mission_id),
        )
        report.replanned.append(mission.mission_id)
