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

from dataclasses import dataclass, field
from datetime import timedelta

from chalicelib.capacity import (
    instances_wanted,
    launch_and_record,
    mission_instances,
    terminate_mission_instances,
)
from chalicelib.context import Context
from chalicelib.domain import Mission, Transaction
from chalicelib.events import send_start_request
from chalicelib.layout import FailureMarker, failure_key
from chalicelib.observability import bind_mission, count, logger
from chalicelib.results import settle
from chalicelib.states import MissionStatus, TransactionStatus, after_failed_attempt


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
    for mission in ctx.store.missions.needing_care():
        bind_mission(mission.mission_id)
        if mission.status is MissionStatus.AWAITING_INPUT:
            _expire_if_input_never_came(ctx, mission, report)
        elif mission.status is MissionStatus.PLANNING:
            _replan_if_abandoned(ctx, mission, report)
        elif mission.status is MissionStatus.RUNNING:
            _care_for_running(ctx, mission, report)
        elif mission.terminal and mission.notified_at is None:
            lease = mission.notify_lease_until
            if lease is None or lease < ctx.clock():
                settle(ctx, mission.mission_id)
                report.mailed.append(mission.mission_id)
    bind_mission(None)
    count("Sweeps")
    count("TransactionsRequeued", report.requeued)
    count("MissionsTimedOut", len(report.timed_out))
    count("Relaunches", len(report.relaunched))
    return report


def _care_for_running(ctx: Context, mission: Mission, report: SweepReport) -> None:
    now = ctx.clock()
    limit = mission.config.timeouts.mission_seconds
    began = mission.running_at or mission.created_at
    if now > (began + timedelta(seconds=limit)).timestamp():
        reason = f"timed out: still running after {limit} s"
        if ctx.store.missions.time_out(mission.mission_id, reason, now):
            terminate_mission_instances(ctx.aws.ec2, mission.mission_id)
            report.timed_out.append(mission.mission_id)
            logger.warning("mission timed out", extra={"reason": reason})
        settle(ctx, mission.mission_id)
        return
    leased = ctx.store.transactions.leased(mission.mission_id)
    for txn in leased:
        if txn.lease_expired(now):
            _take_back(ctx, mission, txn, now, report)
    transactions = ctx.store.transactions
    if not leased and mission.remaining > 0 and not transactions.has_work_left(mission):
        report.requeued += len(transactions.requeue_lost_claims(mission, now))
    if transactions.has_work_left(mission):
        alive = mission_instances(ctx.aws.ec2, mission.mission_id, ["pending", "running"])
        # No live worker: the work is stranded. A launch that came short (partial fulfilment,
        # InsufficientInstanceCapacity) is topped up too. And a retry nobody has claimed for two
        # lease periods means the live instances are not working (hung, or draining): relaunch
        # as if there were none.
        oldest = transactions.oldest_retry_rank(mission.mission_id)
        stranded = oldest is not None and now * 1000 - oldest > 2000 * ctx.settings.lease_seconds
        if not alive or mission.launch_errors or stranded:
            _relaunch(ctx, mission, 0 if stranded else len(alive), report)


def _take_back(
    ctx: Context, mission: Mission, txn: Transaction, now: float, report: SweepReport
) -> None:
    reason = f"lease of {txn.lease_owner} expired: worker lost"
    transactions = ctx.store.transactions
    if after_failed_attempt(txn.attempts, mission.config.max_attempts) is TransactionStatus.PENDING:
        if transactions.take_back_expired(txn, now, reason, requeue=True):
            report.requeued += 1
            logger.warning("expired lease: transaction requeued", extra={"index": txn.index})
        return
    # Out of attempts: report it like a worker would, through a failure marker (written first,
    # so a sweeper that dies here leaves the lease expired and the next sweep writes it again).
    marker = FailureMarker(error=reason, attempts=txn.attempts)
    ctx.aws.s3.put_object(
        Bucket=ctx.settings.result_bucket,
        Key=failure_key(mission.mission_id, txn.index),
        Body=marker.to_bytes(),
    )
    if transactions.take_back_expired(txn, now, reason, requeue=False):
        report.failed += 1
        logger.warning("expired lease, out of attempts", extra={"index": txn.index})


def _relaunch(ctx: Context, mission: Mission, alive: int, report: SweepReport) -> None:
    """Ask for the capacity the remaining work needs (a fresh client token per round)."""
    wanted = instances_wanted(ctx, mission, max(1, mission.remaining)) - alive
    if wanted <= 0:
        return
    round_ = mission.relaunches + 1
    launched = launch_and_record(ctx, mission, wanted, token_suffix=f"r{round_}")
    report.relaunched[mission.mission_id] = launched
    logger.warning(
        "work left and no live worker: capacity relaunched",
        extra={"instances": launched, "round": round_},
    )


def _expire_if_input_never_came(ctx: Context, mission: Mission, report: SweepReport) -> None:
    limit = mission.config.timeouts.mission_seconds
    if ctx.clock() - mission.created_at.timestamp() <= limit:
        return
    where = f"s3://{ctx.settings.source_bucket}/{mission.input_key}"
    reason = f"the input {where} never arrived within {limit} s"
    if ctx.store.missions.expire_awaiting(mission, reason, ctx.clock()):
        report.timed_out.append(mission.mission_id)
        settle(ctx, mission.mission_id)


def _replan_if_abandoned(ctx: Context, mission: Mission, report: SweepReport) -> None:
    lease = mission.planning_lease_until
    if lease is not None and lease < ctx.clock():
        send_start_request(ctx, mission.mission_id)
        report.replanned.append(mission.mission_id)
