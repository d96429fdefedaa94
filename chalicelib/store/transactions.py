"""The transaction table: claims, leases, attempts and the counting of outcomes.

A transaction has no item until a worker claims it (it is PENDING by construction, its slice
computed from the plan); every status change is a conditional write whose sources come from
`chalicelib.states`, and every write by a worker also requires that the worker holds the lease.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from chalicelib.domain import Mission, Transaction, utc
from chalicelib.layout import FailureMarker, Outcome
from chalicelib.planning import Slice
from chalicelib.states import MissionStatus, TransactionStatus, transaction_sources
from chalicelib.store.errors import NotFound, conditional, translated
from chalicelib.store.models import MissionModel, TransactionModel

T = TransactionStatus
RETRY_LOOKAHEAD = 10  # retries read per claim when the cursor is exhausted


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
        self, mission: Mission, owner: str, now: float, lease_seconds: int
    ) -> Transaction | None:
        """Claim a transaction in O(1) calls: never-claimed ones via the cursor, then retries.

        The cursor (an atomic ADD on the mission) hands each worker a distinct index; the
        transaction's item is created right then from the plan, so planning writes nothing per
        transaction and no query grows with the mission. Transactions sent back for another
        attempt are found through the sparse retry index.
        """
        while mission.mission_id not in self._exhausted:
            index = self._advance_cursor(mission.mission_id)
            if index is None:
                if mission.status is MissionStatus.RUNNING:  # read RUNNING: it cannot come back
                    self._exhausted.add(mission.mission_id)
                break
            claimed = self._claim(
                mission.mission_id,
                index,
                owner,
                now,
                lease_seconds,
                first=mission.plan.slice(index),
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
            claimed = self._claim(mission.mission_id, index, owner, now, lease_seconds)
            if claimed is not None:
                return claimed
        return None

    def _advance_cursor(self, mission_id: str) -> int | None:
        """The next never-claimed index, or None once all are handed out (or the mission is no
        longer RUNNING: a cancelled mission hands out nothing)."""
        item = MissionModel(mission_id)
        with conditional(f"advance the claim cursor of {mission_id}") as write:
            item.update(
                actions=[MissionModel.next_index.add(1)],
                condition=(MissionModel.status == MissionStatus.RUNNING.value)
                & (MissionModel.next_index < MissionModel.n_total),
            )
        return int(item.next_index) - 1 if write.applied else None

    def _claim(
        self,
        mission_id: str,
        index: int,
        owner: str,
        now: float,
        lease_seconds: int,
        first: Slice | None = None,
    ) -> Transaction | None:
        """PENDING -> RUNNING; with `first`, create the never-claimed transaction's item."""
        item = TransactionModel(mission_id, index)
        actions = [
            TransactionModel.status.set(T.RUNNING.value),
            TransactionModel.lease_owner.set(owner),
            TransactionModel.lease_expires_at.set(now + lease_seconds),
            TransactionModel.started_at.set(utc(now)),
            TransactionModel.attempts.add(1),
            TransactionModel.claims.add(1),
            TransactionModel.retry_rank.remove(),
        ]
        if first is not None:
            actions += [
                TransactionModel.start.set(first.start),
                TransactionModel.end.set(first.end),
            ]
            condition = TransactionModel.index.does_not_exist()  # no item: PENDING
            with conditional(f"claim transaction {index} of {mission_id}") as write:
                item.update(actions=actions, condition=condition)
            return transaction_of(item) if write.applied else None
        # A retry: claimed with the mission's count of reclaimed retries, atomically, so the
        # status counts stay exact without reading a single transaction.
        condition = TransactionModel.status.is_in(*transaction_sources(T.RUNNING))
        with (
            conditional(f"claim the retry {index} of {mission_id}") as write,
            self._atomic() as tx,
        ):
            tx.update(item, actions=actions, condition=condition)
            tx.update(MissionModel(mission_id), actions=[MissionModel.n_reclaimed.add(1)])
        return self._get(mission_id, index) if write.applied else None

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
        condition = TransactionModel.status.is_in(
            *transaction_sources(status, [T.RUNNING], or_already=True)
        ) & _claim_of(txn, owner)
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
        condition = TransactionModel.status.is_in(*transaction_sources(T.PENDING)) & _claim_of(
            txn, owner
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
            tx.update(MissionModel(txn.mission_id), actions=[MissionModel.n_requeued.add(1)])

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

    def take_back_expired(self, txn: Transaction, now: float, reason: str, requeue: bool) -> bool:
        """Take an expired lease back: requeue the transaction, or, out of attempts, fail it
        (its failure marker, written next, reports it; if that never lands, a recount does).
        False if the worker came back (a heartbeat) or someone else got there first."""
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
        )
        with conditional(f"take back transaction {txn.index}") as write, self._atomic() as tx:
            tx.update(
                TransactionModel(txn.mission_id, txn.index), actions=actions, condition=condition
            )
            if requeue:
                tx.update(MissionModel(txn.mission_id), actions=[MissionModel.n_requeued.add(1)])
        return write.applied

    def requeue_lost_claims(self, mission: Mission, now: float) -> list[int]:
        """Indexes the cursor handed out whose claim never landed (the worker died between the
        cursor's ADD and the item's creation): create them as retries. Only called when no
        transaction is leased, so no live claim can be half-way."""
        with translated(f"list transactions of {mission.mission_id}"):
            present = {
                int(t.index)
                for t in TransactionModel.query(
                    mission.mission_id,
                    consistent_read=True,
                    attributes_to_get=["mission_id", "index"],
                )
            }
        requeued = []
        for index in sorted(set(range(mission.handed_out)) - present):
            s = mission.plan.slice(index)
            item = TransactionModel(
                mission.mission_id,
                index,
                status=T.PENDING.value,
                start=s.start,
                end=s.end,
                attempts=0,
                retry_rank=_retry_rank(now),
                error="claim lost: its worker ended before the claim was written",
            )
            with conditional(f"requeue transaction {index}") as write, self._atomic() as tx:
                tx.save(item, condition=TransactionModel.index.does_not_exist())
                tx.update(
                    MissionModel(mission.mission_id), actions=[MissionModel.n_requeued.add(1)]
                )
            if write.applied:
                requeued.append(index)
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
        """Count a transaction's outcome exactly once, from the claim that holds it. False if it
        was already counted, or if the outcome is stale (another claim holds the transaction,
        or it was requeued)."""
        status = T.SUCCEEDED if outcome.succeeded else T.FAILED
        counter = MissionModel.n_succeeded if outcome.succeeded else MissionModel.n_failed
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
        # Only the holding claim's outcome counts: a part from a claim whose transaction was
        # handed back or taken back (and perhaps claimed again) is stale.
        uncounted = (
            TransactionModel.counted.does_not_exist()
            & TransactionModel.status.is_in(
                *transaction_sources(status, [T.RUNNING], or_already=True)
            )
            & (TransactionModel.claims == outcome.claim)
        )
        with (
            conditional(f"count transaction {outcome.index} of {outcome.mission_id}") as write,
            self._atomic() as tx,
        ):
            tx.update(
                TransactionModel(outcome.mission_id, outcome.index),
                actions=actions,
                condition=uncounted,
            )
            tx.update(
                MissionModel(outcome.mission_id),
                actions=[counter.add(1)],
                condition=MissionModel.status == MissionStatus.RUNNING.value,
            )
        return write.applied
