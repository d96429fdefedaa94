"""The sweeper (a Chalice `schedule`): what no event will do by itself.

- a transaction whose lease expired (its worker died, or was interrupted without handing back)
  goes back to the queue, or, out of attempts, is failed and reported through a failure marker;
- every live state has a deadline: a mission whose input never arrived, one whose planning never
  finished, one still running past its time is failed, its instances terminated, its email sent;
- a mission whose every outcome is counted but that was never finished (the settling event
  died) is settled; outcomes recorded on their items but never counted (their events were lost)
  are counted;
- a mission with work left and no live worker gets new capacity, within its cap;
- a planner that died is replaced (its start request is sent again);
- a mission whose estimated cost reached its budget (`budget_usd`: its own, its pipeline's, or
  for a reduce stage its mission's) is failed, saying so, and its instances terminated; what it
  counted stays counted and its parts stay in the result bucket;
- a mission waiting for another's result is asked to start once that one moved on (a lost
  start request costs a sweep); a reducing mission is moved on once its reduce stage ended;
- an email whose sender died is sent;
- a cancelled mission is wound down: any instance of it still alive is stopped and accounted,
  every lease it still has is settled CANCELLED (a worker still at it finds its heartbeat
  refused and stops its app), and its one email goes out once its figures are final.

Every step is a conditional write or an idempotent call, so two sweeps at once, or a sweep
racing the workers, change nothing twice; and each mission is cared for on its own, so one that
fails (or cannot be read) does not stop the sweep for the others.
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
from chalicelib.layout import FailureMarker, Outcome, failure_key, part_key
from chalicelib.merge import MergeSuspended
from chalicelib.observability import bind_mission, count, logger
from chalicelib.results import cancel_settled, send_report, settle, stop_instances
from chalicelib.scheduler import PLANNING_LEASE_SECONDS
from chalicelib.stages import upstream_moved
from chalicelib.states import MissionStatus, TransactionStatus, after_failed_attempt
from chalicelib.usage import account_alive_instances, still_running

# A mission still PLANNING this long after planning began has seen several planners die (each
# lease outlives one scheduler invocation): its input cannot be planned; fail it, say so.
PLANNING_DEADLINE_SECONDS = 4 * PLANNING_LEASE_SECONDS


@dataclass
class SweepReport:
    requeued: int = 0
    failed: int = 0
    recounted: int = 0
    timed_out: list[str] = field(default_factory=list)
    over_budget: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)
    relaunched: dict[str, int] = field(default_factory=dict)
    replanned: list[str] = field(default_factory=list)
    mailed: list[str] = field(default_factory=list)
    leases_cancelled: int = 0  # leases of cancelled missions settled CANCELLED
    errors: dict[str, str] = field(default_factory=dict)  # mission id -> what went wrong


def sweep(ctx: Context) -> SweepReport:
    report = SweepReport()
    for mission_id in ctx.store.missions.needing_care():
        bind_mission(mission_id)
        try:
            _care_for(ctx, ctx.store.missions.get(mission_id), report)
        except MergeSuspended as e:  # a long merge goes on through its own requests: no error
            logger.info("merge under way", extra={"why": str(e)})
        except Exception as e:  # one mission's trouble must not stop the sweep for the others
            report.errors[mission_id] = repr(e)
            logger.exception("sweeping this mission failed; the next sweep tries again")
    bind_mission(None)
    count("Sweeps")
    count("TransactionsRequeued", report.requeued)
    count("TransactionsRecounted", report.recounted)
    count("MissionsTimedOut", len(report.timed_out))
    count("Relaunches", len(report.relaunched))
    count("SweepErrors", len(report.errors))
    return report


def _care_for(ctx: Context, mission: Mission, report: SweepReport) -> None:
    if mission.status is MissionStatus.AWAITING_INPUT and mission.upstream is not None:
        # No deadline of its own while it waits: its upstream's states all have theirs.
        if upstream_moved(ctx, mission):
            send_start_request(ctx, mission.mission_id)
            report.replanned.append(mission.mission_id)
    elif mission.status is MissionStatus.AWAITING_INPUT:
        _expire_if_input_never_came(ctx, mission, report)
    elif mission.status is MissionStatus.PLANNING:
        _replan_if_abandoned(ctx, mission, report)
    elif mission.status is MissionStatus.RUNNING:
        _care_for_running(ctx, mission, report)
    elif mission.status is MissionStatus.REDUCING:
        # Its reduce stage has deadlines of its own; once it ended, this one ends.
        settle(ctx, mission.mission_id)
    elif mission.status is MissionStatus.CANCELLED and mission.notified_at is None:
        _wind_down_cancelled(ctx, mission, report)
    elif mission.terminal and mission.notified_at is None:
        lease = mission.notify_lease_until
        if lease is None or lease < ctx.clock():
            settle(ctx, mission.mission_id)
            report.mailed.append(mission.mission_id)


def _care_for_running(ctx: Context, mission: Mission, report: SweepReport) -> None:
    now = ctx.clock()
    limit = mission.config.timeouts.mission_seconds
    began = mission.running_at or mission.created_at
    if now > (began + timedelta(seconds=limit)).timestamp():
        reason = f"timed out: still running after {limit} s"
        if _fail_running(ctx, mission, reason):
            report.timed_out.append(mission.mission_id)
        return
    over = budget_exhausted(ctx, mission)
    if over is not None:
        if _fail_running(ctx, mission, over):
            report.over_budget.append(mission.mission_id)
        return
    if mission.remaining == 0:  # every outcome counted: the event that completed it died
        settle(ctx, mission.mission_id)
        report.settled.append(mission.mission_id)
        return
    transactions = ctx.store.transactions
    leased = transactions.leased(mission.mission_id)
    for txn in leased:
        if txn.lease_expired(now):
            _take_back(ctx, mission, txn, now, report)
    # A heartbeat within the last lease period: some worker is alive and working.
    working = any(not txn.lease_expired(now) for txn in leased)
    if not working and not transactions.has_work_left(mission):
        # Stalled: nothing runs, nothing waits. Outcomes whose events were lost are counted;
        # indexes handed out whose claims never landed are created as retries.
        if _recount(ctx, mission, report):
            return
        report.requeued += len(transactions.requeue_lost_claims(mission, now))
    if transactions.has_work_left(mission):
        _capacity_for(ctx, mission, working, now, report)


def _fail_running(ctx: Context, mission: Mission, reason: str) -> bool:
    """Fail a running mission as a whole: claims stop (they need RUNNING), its instances are
    terminated and accounted, what counted stays counted, its parts stay; its email goes out.
    False if it ended meanwhile."""
    account_alive_instances(ctx, mission)  # by their age, before their agents are refused
    failed = ctx.store.missions.time_out(mission, reason, ctx.clock())
    if failed:
        stop_instances(ctx, ctx.store.missions.get(mission.mission_id))  # and any launched since
        logger.warning("mission failed as a whole", extra={"reason": reason})
    settle(ctx, mission.mission_id)
    return failed


def budget_exhausted(ctx: Context, mission: Mission) -> str | None:
    """Why the mission must stop for its budget, or None: its estimated cost so far (what its
    agents reported, and its instances still running by their age) against its own
    `budget_usd`; for a reduce stage, with its mission's cost, against its mission's budget;
    in a pipeline, with the other stages' costs, against the pipeline's. One DescribeInstances
    per sweep, only for a mission that has a budget to keep."""
    parent = ctx.store.missions.get(mission.reduce_of) if mission.reduce_of else None
    owner = parent or mission  # whose config and pipeline the budget is
    pipeline = owner.pipeline
    if owner.config.budget_usd is None and (pipeline is None or pipeline.budget_usd is None):
        return None
    spent = mission.estimated_cost + still_running(ctx, mission.mission_id).estimated_cost
    if parent is not None:
        spent += parent.estimated_cost
    limits = [(owner.config.budget_usd, spent, "")]
    if pipeline is not None and pipeline.budget_usd is not None:
        others = sum(
            ctx.store.missions.get(m).estimated_cost
            for m in pipeline.mission_ids
            if m != owner.mission_id
        )
        limits.append((pipeline.budget_usd, spent + others, f" (pipeline {pipeline.name!r})"))
    for budget, cost, whose in limits:
        if budget is not None and cost >= budget:
            return f"budget exhausted: {usd(cost)} of {usd(budget)}{whose}"
    return None


def usd(amount: float) -> str:
    """Dollars as a reader takes them: cents, or more digits for amounts under a cent."""
    return f"${amount:,.2f}" if amount >= 0.01 else f"${amount:.6f}"


def _wind_down_cancelled(ctx: Context, mission: Mission, report: SweepReport) -> None:
    """Settle what a cancel left, then send its email once the figures are final.

    Each sweep stops (and accounts) any instance of the mission still alive (one launched just
    before the cancel, or one DescribeInstances did not show it yet) and settles every lease
    still held, expired or not. The email goes out from the first sweep past the quiet period
    that found nothing left to do, or past the deadline whatever it found (`cancel_settled`).
    """
    now = ctx.clock()
    try:
        busy = bool(stop_instances(ctx, mission))
        reason = "cancelled while it ran: its mission was cancelled"
        for txn in ctx.store.transactions.leased(mission.mission_id):
            if ctx.store.transactions.cancel(txn, now, reason):
                report.leases_cancelled += 1
                busy = True
    except Exception:
        if not cancel_settled(ctx, mission, busy=True):
            raise  # the next sweep tries again
        logger.exception("could not wind the cancelled mission down; its email goes out anyway")
        busy = True
    lease = mission.notify_lease_until
    if cancel_settled(ctx, mission, busy) and (lease is None or lease < now):
        send_report(ctx, ctx.store.missions.get(mission.mission_id))
        report.mailed.append(mission.mission_id)


def _capacity_for(
    ctx: Context, mission: Mission, working: bool, now: float, report: SweepReport
) -> None:
    """Launch for work that has no live worker (or came short), never beyond the cap.

    Work is stranded when every index is handed out, a retry has waited two lease periods, no
    worker heartbeats and no relaunch is still booting: the live instances are not working
    (hung, or draining), so they are replaced. A launch that came short (partial fulfilment,
    InsufficientInstanceCapacity) is topped up.
    """
    alive = mission_instances(ctx.aws.ec2, mission.mission_id, ["pending", "running"])
    patience_ms = 2000 * ctx.settings.lease_seconds
    oldest = ctx.store.transactions.oldest_retry_rank(mission.mission_id)
    booting = (
        mission.relaunched_at is not None
        and now * 1000 - mission.relaunched_at.timestamp() * 1000 < patience_ms
    )
    stranded = (
        mission.handed_out >= mission.total
        and oldest is not None
        and now * 1000 - oldest > patience_ms
        and not working
        and not booting
    )
    if stranded:
        terminated = terminate_mission_instances(ctx.aws.ec2, mission.mission_id)
        logger.warning("stranded work: idle instances replaced", extra={"idle": len(terminated)})
        _relaunch(ctx, mission, 0, report)
    elif not alive or mission.launch_errors:
        _relaunch(ctx, mission, len(alive), report)


def _recount(ctx: Context, mission: Mission, report: SweepReport) -> bool:
    """Count the outcomes recorded on items but never counted; True if any was."""
    counted = 0
    for txn in ctx.store.transactions.finished_uncounted(mission.mission_id):
        succeeded = txn.status is TransactionStatus.SUCCEEDED
        outcome = Outcome(mission.mission_id, txn.index, succeeded, txn.claim, txn.span)
        if succeeded:
            key = txn.part_key or part_key(mission.mission_id, txn.index, txn.claim, txn.span)
            failure = None
        else:
            key = failure_key(mission.mission_id, txn.index, txn.claim, txn.span)
            failure = FailureMarker(error=txn.error, exit_code=txn.exit_code, attempts=txn.attempts)
        counted += ctx.store.transactions.count_outcome(outcome, key, failure)
    if counted:
        report.recounted += counted
        logger.warning("outcomes recounted: their events were lost", extra={"count": counted})
        settle(ctx, mission.mission_id)
        if ctx.store.missions.get(mission.mission_id).terminal:
            report.settled.append(mission.mission_id)
    return counted > 0


def _take_back(
    ctx: Context, mission: Mission, txn: Transaction, now: float, report: SweepReport
) -> None:
    reason = f"lease of {txn.lease_owner} expired: worker lost"
    attempts = mission.config.max_attempts
    # A block of several is cut in two and requeued, no attempt spent (`take_back_expired`).
    requeue = (
        txn.span > 1 or after_failed_attempt(txn.attempts, attempts) is TransactionStatus.PENDING
    )
    # The lease is taken back first: a worker that heartbeat meanwhile keeps its transaction
    # (the condition says no), and nothing is reported for it.
    if not ctx.store.transactions.take_back_expired(txn, now, reason, requeue, mission.plan):
        return
    if requeue:
        report.requeued += txn.span
        logger.warning("expired lease: transaction requeued", extra={"index": txn.index})
        return
    # Out of attempts, now FAILED: reported like a worker would, through a failure marker (if
    # this sweeper dies before writing it, the recount of a stalled mission counts it).
    marker = FailureMarker(error=reason, attempts=txn.attempts)
    ctx.aws.s3.put_object(
        Bucket=ctx.settings.result_bucket,
        Key=failure_key(mission.mission_id, txn.index, txn.claim),
        Body=marker.to_bytes(),
    )
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
    now = ctx.clock()
    if lease is not None and lease >= now:
        return  # a planner is at work
    began = (mission.started_at or mission.created_at).timestamp()
    if now - began > PLANNING_DEADLINE_SECONDS:
        reason = (
            f"planning did not finish within {PLANNING_DEADLINE_SECONDS} s"
            " (each planner died or ran out of time; see light_scheduler's logs)"
        )
        if ctx.store.missions.expire_planning(mission, reason, now):
            report.timed_out.append(mission.mission_id)
            settle(ctx, mission.mission_id)
        return
    send_start_request(ctx, mission.mission_id)
    report.replanned.append(mission.mission_id)
