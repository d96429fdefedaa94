"""The transaction table: claims, leases, attempts and the counting of outcomes.

A transaction has no item until a worker claims it (it is PENDING by construction, its slice
computed from the plan); every status change is a conditional write whose sources come from
`chalicelib.states`, and every write by a worker also requires that the worker holds the lease.

A claim takes a run of consecutive transactions at once, a block: one item (keyed by its first
index, `span` long), one lease, one part, one count. So the writes on the mission item, the
hottest in the table, are one per block, not per transaction. A block is cut (`split`) where
its worker stops early: the part covers the transactions before the cut, and the rest goes
back from the cut on, so a failed transaction is retried alone, first in its own block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from chalicelib.domain import Mission, Transaction, utc
from chalicelib.layout import FailureMarker, Outcome
from chalicelib.planning import Plan
from chalicelib.states import MissionStatus, TransactionStatus, transaction_sources
from chalicelib.store.errors import NotFound, conditional, translated
from chalicelib.store.models import MissionModel, TransactionModel

T = TransactionStatus
RETRY_LOOKAHEAD = 10  # retries read per claim when the cursor is exhausted
MAX_SPAN = 1000  # transactions in one block, at most (a claim, a lease, a part)


def transaction_of(item: TransactionModel) -> Transaction:
    """The one place a transaction item becomes a `Transaction`."""
    return Transaction(
        mission_id=item.mission_id,
        index=int(item.index),
        status=TransactionStatus(item.status),
        start=int(item.start),
        end=int(item.end),
        attempts=int(item.attempts or 0),
        claim=int(item.claims or 0),
        lease_owner=item.lease_owner,
        lease_expires_at=None if item.lease_expires_at is None else float(item.lease_expires_at),
        exit_code=None if item.exit_code is None else int(item.exit_code),
        error=item.error,
        started_at=item.started_at,
        finished_at=item.finished_at,
        run_seconds=None if item.run_seconds is None else float(item.run_seconds),
        part_key=item.part_key,
        counted=bool(item.counted),
        span=int(item.span or 1),
    )


def _retry_rank(now: float) -> int:
    """Position in the retry index: oldest first (epoch milliseconds)."""
    return int(now * 1000)


def _claim_of(txn: Transaction, owner: str) -> Condition:
    """The item is still in `owner`'s claim `txn.claim` (not requeued and claimed again)."""
    return (TransactionModel.lease_owner == owner) & (TransactionModel.claims == txn.claim)


def _held_by(txn: Transaction, owner: str) -> Condition:
    """The item is leased (RUNNING) to `owner`, in the claim `txn` was read in."""
    return (TransactionModel.status == T.RUNNING.value) & _claim_of(txn, owner)


def _spans(txn: Transaction) -> Condition:
    """The item still covers what `txn` covers (it was not cut meanwhile)."""
    return TransactionModel.span == txn.span


class TransactionStore:
    def __init__(self, atomic: Callable[[], TransactWrite]) -> None:
        # A DynamoDB TransactWriteItems: several items written all or nothing.
        self._atomic = atomic
        # Missions whose cursor this process found exhausted: that is for good (the plan's
        # count is fixed, and a mission that is not RUNNING never runs again), so later claims
        # skip the conditional ADD, a write (1 WCU even when refused) on the hottest item.
        self._exhausted: set[str] = set()

    # ---- reads ------------------------------------------------------------------------------

    def of(
        self, mission_id: str, first: int | None = None, last: int | None = None
    ) -> Iterator[Transaction]:
        """The claimed transactions of a mission (all, or indexes first..last), in index order."""
        condition = None
        if first is not None and last is not None:
            condition = TransactionModel.index.between(first, last)
        with translated(f"read transactions of {mission_id}"):
            for item in TransactionModel.query(mission_id, condition, consistent_read=True):
                yield transaction_of(item)

    def covering(self, mission_id: str, first: int, last: int) -> list[Transaction]:
        """The items that cover any of indexes first..last, in index order: those keyed in the
        range, and the block before it if it reaches in (one more query, of one item)."""
        with translated(f"read transactions of {mission_id}"):
            before = [
                transaction_of(item)
                for item in TransactionModel.query(
                    mission_id,
                    TransactionModel.index < first,
                    consistent_read=True,
                    scan_index_forward=False,
                    limit=1,
                )
            ]
        reaching = [t for t in before if t.last >= first]
        return reaching + list(self.of(mission_id, first, last))

    def leased(self, mission_id: str) -> list[Transaction]:
        """The running transactions of a mission, read fresh (the lease index lags)."""
        with translated(f"read leases of {mission_id}"):
            keys = [int(k.index) for k in TransactionModel.lease_index.query(mission_id)]
            fresh = [self._get(mission_id, index) for index in keys]
        return [t for t in fresh if t is not None and t.status is T.RUNNING]

    def oldest_retry_rank(self, mission_id: str) -> int | None:
        """When (epoch ms) the longest-waiting retry was queued, or None if none waits."""
        with translated(f"look for retries in {mission_id}"):
            for item in TransactionModel.retry_index.query(mission_id, limit=1):
                return int(item.retry_rank)
        return None

    def has_work_left(self, mission: Mission) -> bool:
        """Transactions never claimed, or waiting for a retry."""
        return (
            mission.handed_out < mission.total
            or self.oldest_retry_rank(mission.mission_id) is not None
        )

    def _get(self, mission_id: str, index: int) -> Transaction | None:
        try:
            with translated(f"read transaction {index} of {mission_id}"):
                return transaction_of(TransactionModel.get(mission_id, index, consistent_read=True))
        except NotFound:
            return None

    # ---- claims (the worker) ----------------------------------------------------------------

    def claim_next(
        self, mission: Mission, owner: str, now: float, lease_seconds: int, want: int = 1
    ) -> Transaction | None:
        """Claim a block of up to `want` transactions in O(1) calls: never-claimed ones via the
        cursor, then retries (a retried block is claimed as it was sent back).

        The cursor (an atomic ADD on the mission) hands each worker a distinct run of indexes;
        the block's item is created right then from the plan, so planning writes nothing per
        transaction and no query grows with the mission. Blocks sent back for another attempt
        are found through the sparse retry index.
        """
        want = max(1, min(want, MAX_SPAN))
        while mission.mission_id not in self._exhausted:
            index = self._advance_cursor(mission.mission_id, want)
            if index is None:
                if mission.status is MissionStatus.RUNNING:  # read RUNNING: it cannot come back
                    self._exhausted.add(mission.mission_id)
                break
            last = min(index + want, mission.total) - 1
            claimed = self._claim_new(
                mission.mission_id,
                index,
                owner,
                now,
                lease_seconds,
                span=last - index + 1,
                start=mission.plan.slice(index).start,
                end=mission.plan.slice(last).end,
            )
            if claimed is not None:
                return claimed
        with translated(f"look for retries in {mission.mission_id}"):
            waiting = [
                int(item.index)
                for item in TransactionModel.retry_index.query(
                    mission.mission_id, limit=RETRY_LOOKAHEAD
                )
            ]
        for index in waiting:
            claimed = self._claim_retry(mission.mission_id, index, owner, now, lease_seconds)
            if claimed is not None:
                return claimed
        return None

    def _advance_cursor(self, mission_id: str, want: int) -> int | None:
        """The first of the next `want` never-claimed indexes (the run may end past the plan:
        the caller cuts it there), or None once all are handed out (or the mission is no longer
        RUNNING: a cancelled mission hands out nothing)."""
        item = MissionModel(mission_id)
        with conditional(f"advance the claim cursor of {mission_id}") as write:
            item.update(
                actions=[MissionModel.next_index.add(want)],
                condition=(MissionModel.status == MissionStatus.RUNNING.value)
                & (MissionModel.next_index < MissionModel.n_total),
            )
        return int(item.next_index) - want if write.applied else None

    @staticmethod
    def _claim_actions(owner: str, now: float, lease_seconds: int) -> list[Action]:
        return [
            TransactionModel.status.set(T.RUNNING.value),
            TransactionModel.lease_owner.set(owner),
            TransactionModel.lease_expires_at.set(now + lease_seconds),
            TransactionModel.started_at.set(utc(now)),
            TransactionModel.attempts.add(1),
            TransactionModel.claims.add(1),
            TransactionModel.retry_rank.remove(),
        ]

    def _claim_new(
        self,
        mission_id: str,
        index: int,
        owner: str,
        now: float,
        lease_seconds: int,
        *,
        span: int,
        start: int,
        end: int,
    ) -> Transaction | None:
        """Create the item of a never-claimed block, RUNNING (the cursor handed it to us)."""
        item = TransactionModel(mission_id, index)
        actions = [
            *self._claim_actions(owner, now, lease_seconds),
            TransactionModel.start.set(start),
            TransactionModel.end.set(end),
            TransactionModel.span.set(span),
        ]
        condition = TransactionModel.index.does_not_exist()  # no item: PENDING
        with conditional(f"claim transactions {index}+{span} of {mission_id}") as write:
            item.update(actions=actions, condition=condition)
        return transaction_of(item) if write.applied else None

    def _claim_retry(
        self, mission_id: str, index: int, owner: str, now: float, lease_seconds: int
    ) -> Transaction | None:
        """PENDING -> RUNNING for a block sent back, with the mission's count of reclaimed
        transactions, atomically, so the status counts stay exact without reading a single
        transaction. Read first, for its span (the retry index holds keys only)."""
        waiting = self._get(mission_id, index)
        if waiting is None or waiting.status not in transaction_sources(T.RUNNING):
            return None
        condition = (
            TransactionModel.status.is_in(*transaction_sources(T.RUNNING))
            & (TransactionModel.claims == waiting.claim)
            & _spans(waiting)
        )
        with (
            conditional(f"claim the retry {index} of {mission_id}") as write,
            self._atomic() as tx,
        ):
            tx.update(
                TransactionModel(mission_id, index),
                actions=self._claim_actions(owner, now, lease_seconds),
                condition=condition,
            )
            tx.update(
                MissionModel(mission_id), actions=[MissionModel.n_reclaimed.add(waiting.span)]
            )
        return self._get(mission_id, index) if write.applied else None

    # ---- blocks (the worker) ----------------------------------------------------------------

    def split(
        self, txn: Transaction, owner: str, at: int, boundary: int, now: float, lease_seconds: int
    ) -> tuple[Transaction, Transaction]:
        """Cut a held block before index `at` (`boundary`: where that slice starts): the item
        keeps index..at-1, and a new item, held by the same owner in the same claim, takes
        at..last, with one attempt (its first transaction's, just made; the others in it were
        never tried). No count moves: both stay RUNNING. Conflict if the block is not ours."""
        if not txn.index < at <= txn.last:
            raise ValueError(f"cannot cut block {txn.index}..{txn.last} at {at}")
        tail = Transaction(
            mission_id=txn.mission_id,
            index=at,
            status=T.RUNNING,
            start=boundary,
            end=txn.end,
            span=txn.last - at + 1,
            attempts=1,
            claim=txn.claim,
            lease_owner=owner,
            lease_expires_at=now + lease_seconds,
            started_at=utc(now),
        )
        with (
            translated(
                f"cut block {txn.index} at {at}",
                refused=f"block {txn.index} is no longer held by {owner}",
            ),
            self._atomic() as tx,
        ):
            tx.update(
                TransactionModel(txn.mission_id, txn.index),
                actions=[
                    TransactionModel.span.set(at - txn.index),
                    TransactionModel.end.set(boundary),
                ],
                condition=_held_by(txn, owner) & _spans(txn),
            )
            # An update that creates the item, not a put: the worker may not replace items
            # (a put could drop a counted item's `counted`), only write the attributes it owns.
            tx.update(
                TransactionModel(txn.mission_id, at),
                actions=[
                    TransactionModel.status.set(T.RUNNING.value),
                    TransactionModel.start.set(tail.start),
                    TransactionModel.end.set(tail.end),
                    TransactionModel.span.set(tail.span),
                    TransactionModel.attempts.set(tail.attempts),
                    TransactionModel.claims.set(tail.claim),
                    TransactionModel.lease_owner.set(owner),
                    TransactionModel.lease_expires_at.set(tail.lease_expires_at),
                    TransactionModel.started_at.set(tail.started_at),
                ],
                condition=TransactionModel.index.does_not_exist(),
            )
        return replace(txn, span=at - txn.index, end=boundary), tail

    # ---- attempts (the worker) --------------------------------------------------------------

    def extend_lease(self, txn: Transaction, owner: str, now: float, lease_seconds: int) -> bool:
        """The heartbeat. False if the lease is no longer ours (expired and taken back)."""
        with conditional(f"extend the lease of {txn.index}") as write:
            TransactionModel(txn.mission_id, txn.index).update(
                actions=[TransactionModel.lease_expires_at.set(now + lease_seconds)],
                condition=_held_by(txn, owner),
            )
        return write.applied

    def requeue(
        self, txn: Transaction, owner: str, exit_code: int | None, error: str, now: float
    ) -> None:
        """Hand a failed attempt back for another try (by any worker); Conflict if not ours."""
        self._release(
            txn,
            owner,
            [TransactionModel.exit_code.set(exit_code), TransactionModel.error.set(error)],
            now,
        )

    def hand_back(self, txn: Transaction, owner: str, now: float, reason: str) -> None:
        """Give a transaction back without spending an attempt (Spot interruption, shutdown)."""
        self._release(
            txn,
            owner,
            [TransactionModel.attempts.add(-1), TransactionModel.error.set(reason)],
            now,
        )

    def finish(
        self,
        txn: Transaction,
        *,
        owner: str,
        status: TransactionStatus,
        exit_code: int | None,
        error: str | None,
        run_seconds: float,
        part_key: str | None,
        now: float,
    ) -> None:
        """Record the worker's view of a terminal attempt (exit code, timings).

        result_processor may already have counted it (same status, lease owner kept): the
        timings are still recorded. A worker whose lease was taken records nothing.
        """
        condition = (
            TransactionModel.status.is_in(
                *transaction_sources(status, [T.RUNNING], or_already=True)
            )
            & _claim_of(txn, owner)
            & _spans(txn)
        )
        with conditional(f"finish transaction {txn.index}"):
            TransactionModel(txn.mission_id, txn.index).update(
                actions=[
                    TransactionModel.status.set(status.value),
                    TransactionModel.exit_code.set(exit_code),
                    TransactionModel.error.set(error),
                    TransactionModel.run_seconds.set(run_seconds),
                    TransactionModel.part_key.set(part_key),
                    TransactionModel.finished_at.set(utc(now)),
                    TransactionModel.lease_expires_at.remove(),
                ],
                condition=condition,
            )

    def _release(self, txn: Transaction, owner: str, actions: list[Action], now: float) -> None:
        """RUNNING -> PENDING by the lease holder, onto the retry index."""
        condition = (
            TransactionModel.status.is_in(*transaction_sources(T.PENDING))
            & _claim_of(txn, owner)
            & _spans(txn)
        )
        with (
            translated(
                f"release transaction {txn.index}",
                refused=f"transaction {txn.index} is no longer held by {owner}",
            ),
            self._atomic() as tx,
        ):
            tx.update(
                TransactionModel(txn.mission_id, txn.index),
                actions=[
                    TransactionModel.status.set(T.PENDING.value),
                    *actions,
                    TransactionModel.retry_rank.set(_retry_rank(now)),
                    TransactionModel.lease_owner.remove(),
                    TransactionModel.lease_expires_at.remove(),
                ],
                condition=condition,
            )
            tx.update(MissionModel(txn.mission_id), actions=[MissionModel.n_requeued.add(txn.span)])

    # ---- a cancelled mission (its worker, or the sweeper) ----------------------------------

    def cancel(self, txn: Transaction, now: float, reason: str, owner: str | None = None) -> bool:
        """RUNNING -> CANCELLED: settle the lease of a cancelled mission's transaction, by the
        worker that holds it (`owner`) or by the sweeper (any lease, expired or not: its worker,
        if alive, finds its heartbeat refused and stops the app). Off the lease index; who ran
        it is kept. False if it is no longer in that claim (finished, or settled already)."""
        condition = TransactionModel.status.is_in(
            *transaction_sources(T.CANCELLED, [T.RUNNING])
        ) & (TransactionModel.claims == txn.claim)
        if owner is not None:
            condition &= TransactionModel.lease_owner == owner
        with conditional(f"cancel transaction {txn.index} of {txn.mission_id}") as write:
            TransactionModel(txn.mission_id, txn.index).update(
                actions=[
                    TransactionModel.status.set(T.CANCELLED.value),
                    TransactionModel.lease_expires_at.remove(),
                    TransactionModel.retry_rank.remove(),
                    TransactionModel.finished_at.set(utc(now)),
                    TransactionModel.error.set(reason),
                ],
                condition=condition,
            )
        return write.applied

    # ---- repairs (the sweeper) --------------------------------------------------------------

    def take_back_expired(
        self, txn: Transaction, now: float, reason: str, requeue: bool, plan: Plan | None = None
    ) -> bool:
        """Take an expired lease back: requeue the block, or, out of attempts, fail it (its
        failure marker, written next, reports it; if that never lands, a recount does).

        A block of several is cut in two halves instead, both requeued and no attempt spent:
        which of its transactions the worker died on is unknown, and blaming the first would
        fail a sound transaction for a bad one behind it. A transaction that kills its worker
        every time is alone in its block after a few rounds, and then spends its attempts.
        False if the worker came back (a heartbeat) or someone else got there first."""
        if txn.span > 1:
            requeue = True
        target = T.PENDING if requeue else T.FAILED
        actions = [
            TransactionModel.status.set(target.value),
            TransactionModel.lease_owner.remove(),
            TransactionModel.lease_expires_at.remove(),
            TransactionModel.error.set(reason),
        ]
        if requeue:
            actions.append(TransactionModel.retry_rank.set(_retry_rank(now)))
        condition = (
            TransactionModel.status.is_in(*transaction_sources(target))
            & _claim_of(txn, txn.lease_owner or "")
            & (TransactionModel.lease_expires_at < now)
            & _spans(txn)
        )
        tail = None
        if txn.span > 1:
            if plan is None:
                raise ValueError(f"cutting block {txn.index} needs its mission's plan")
            at = txn.index + txn.span // 2
            boundary = plan.slice(at).start
            actions += [
                TransactionModel.attempts.add(-1),
                TransactionModel.span.set(at - txn.index),
                TransactionModel.end.set(boundary),
            ]
            tail = TransactionModel(
                txn.mission_id,
                at,
                status=T.PENDING.value,
                start=boundary,
                end=txn.end,
                span=txn.last - at + 1,
                attempts=0,
                claims=txn.claim,
                retry_rank=_retry_rank(now),
                error=reason,
            )
        with conditional(f"take back transaction {txn.index}") as write, self._atomic() as tx:
            tx.update(
                TransactionModel(txn.mission_id, txn.index), actions=actions, condition=condition
            )
            if tail is not None:
                tx.save(tail, condition=TransactionModel.index.does_not_exist())
            if requeue:
                tx.update(
                    MissionModel(txn.mission_id), actions=[MissionModel.n_requeued.add(txn.span)]
                )
        return write.applied

    def requeue_lost_claims(self, mission: Mission, now: float) -> list[int]:
        """Indexes the cursor handed out whose claim never landed (the worker died between the
        cursor's ADD and the item's creation): create them as retries, a block per run of them
        (at most MAX_SPAN). Only called when no transaction is leased, so no live claim can be
        half-way. Returns the indexes requeued."""
        with translated(f"list transactions of {mission.mission_id}"):
            present = set()
            for t in TransactionModel.query(
                mission.mission_id,
                consistent_read=True,
                attributes_to_get=["mission_id", "index", "span"],
            ):
                present.update(range(int(t.index), int(t.index) + int(t.span or 1)))
        missing = sorted(set(range(min(mission.handed_out, mission.total))) - present)
        requeued: list[int] = []
        for run in _runs(missing, MAX_SPAN):
            first, last = run[0], run[-1]
            item = TransactionModel(
                mission.mission_id,
                first,
                status=T.PENDING.value,
                start=mission.plan.slice(first).start,
                end=mission.plan.slice(last).end,
                span=len(run),
                attempts=0,
                claims=0,
                retry_rank=_retry_rank(now),
                error="claim lost: its worker ended before the claim was written",
            )
            with conditional(f"requeue transaction {first}") as write, self._atomic() as tx:
                tx.save(item, condition=TransactionModel.index.does_not_exist())
                tx.update(
                    MissionModel(mission.mission_id),
                    actions=[MissionModel.n_requeued.add(len(run))],
                )
            if write.applied:
                requeued += run
        return requeued

    def finished_uncounted(self, mission_id: str) -> list[Transaction]:
        """Transactions whose outcome is recorded on the item but was never counted (its event
        was lost, or its failure marker never written): what a recount counts."""
        finished = TransactionModel.status.is_in(T.SUCCEEDED.value, T.FAILED.value)
        with translated(f"read the uncounted transactions of {mission_id}"):
            return [
                transaction_of(item)
                for item in TransactionModel.query(
                    mission_id,
                    filter_condition=finished & TransactionModel.counted.does_not_exist(),
                    consistent_read=True,
                )
            ]

    # ---- outcomes (result_processor) --------------------------------------------------------

    def count_outcome(
        self, outcome: Outcome, part_key: str, failure: FailureMarker | None = None
    ) -> bool:
        """Count a block's outcome exactly once, from the claim that holds it, for each of its
        transactions. False if it was already counted, or if the outcome is stale (another
        claim holds the block, it was requeued, or it was cut since)."""
        return self.count_outcomes([(outcome, part_key, failure)])

    def count_outcomes(self, outcomes: list[tuple[Outcome, str, FailureMarker | None]]) -> bool:
        """Count the outcomes of several blocks of one mission at once, all or none: one
        DynamoDB transaction, with a single write of the mission's counts for all of them (the
        hottest item is written once per batch of results, not once per block). False, and
        nothing counted, if any of them was already counted or is stale."""
        if not outcomes:
            return False
        mission_id = outcomes[0][0].mission_id
        if len(outcomes) > MAX_COUNTED_AT_ONCE or any(
            o.mission_id != mission_id for o, _, _ in outcomes
        ):
            raise ValueError(f"at most {MAX_COUNTED_AT_ONCE} outcomes of one mission at once")
        succeeded = sum(o.span for o, _, _ in outcomes if o.succeeded)
        failed = sum(o.span for o, _, _ in outcomes if not o.succeeded)
        counts = [
            counter.add(n)
            for counter, n in (
                (MissionModel.n_succeeded, succeeded),
                (MissionModel.n_failed, failed),
            )
            if n
        ]
        first = outcomes[0][0]
        described = f"transaction {first.index}" + (
            f" and {len(outcomes) - 1} more" if len(outcomes) > 1 else ""
        )
        with (
            conditional(f"count {described} of {mission_id}") as write,
            self._atomic() as tx,
        ):
            for outcome, part_key, failure in outcomes:
                actions, condition = _counting(outcome, part_key, failure)
                tx.update(
                    TransactionModel(mission_id, outcome.index),
                    actions=actions,
                    condition=condition,
                )
            tx.update(
                MissionModel(mission_id),
                actions=counts,
                condition=MissionModel.status == MissionStatus.RUNNING.value,
            )
        return write.applied


# DynamoDB takes at most 100 writes in one transaction: the blocks, and the mission's counts.
MAX_COUNTED_AT_ONCE = 99


def _counting(
    outcome: Outcome, part_key: str, failure: FailureMarker | None
) -> tuple[list[Action], Condition]:
    """The write that counts one block's outcome, and its condition: only the holding claim's
    outcome counts (a part from a claim whose block was handed back or taken back, and perhaps
    claimed again, or cut since, is stale), and only once."""
    status = T.SUCCEEDED if outcome.succeeded else T.FAILED
    actions = [
        TransactionModel.counted.set(True),
        TransactionModel.status.set(status.value),
        # lease_owner stays: who ran it, and the worker's own finish still matches it.
        TransactionModel.lease_expires_at.remove(),
        TransactionModel.retry_rank.remove(),
    ]
    if failure is None:
        actions.append(TransactionModel.part_key.set(part_key))
    else:
        actions += [
            TransactionModel.exit_code.set(failure.exit_code),
            TransactionModel.error.set(failure.error),
        ]
    uncounted = (
        TransactionModel.counted.does_not_exist()
        & TransactionModel.status.is_in(*transaction_sources(status, [T.RUNNING], or_already=True))
        & (TransactionModel.claims == outcome.claim)
        & (TransactionModel.span == outcome.span)
    )
    return actions, uncounted


def _runs(indexes: list[int], longest: int) -> Iterator[list[int]]:
    """Sorted indexes as runs of consecutive ones, each at most `longest` long."""
    run: list[int] = []
    for index in indexes:
        if run and (index != run[-1] + 1 or len(run) == longest):
            yield run
            run = []
        run.append(index)
    if run:
        yield run
