"""The repository: every DynamoDB read and write, and the translation of pynamodb's errors.

Callers see `NotFound`, `Conflict` (a condition said no: someone else got there first) and
`StoreError`; never pynamodb or botocore exceptions, and never a match on message text.
Every state change is a conditional write whose condition comes from `chalicelib.states`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from pynamodb.connection import Connection
from pynamodb.exceptions import DoesNotExist, PynamoDBException, TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.transactions import TransactWrite

from chalicelib.models import (
    LISTED,
    NEEDS_CARE,
    InputModel,
    MissionModel,
    TransactionModel,
    bind_tables,
)
from chalicelib.planning import Plan, Slice
from chalicelib.settings import Settings
from chalicelib.states import (
    TERMINAL_MISSION,
    MissionStatus,
    TransactionStatus,
    mission_sources,
    transaction_sources,
)

_CONDITION_FAILED = "ConditionalCheckFailedException"


class StoreError(RuntimeError):
    pass


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    """A conditional write was refused: the item is not in the state the caller expected."""


class InputBusy(Conflict):
    def __init__(self, input_key: str, mission_id: str | None) -> None:
        super().__init__(f"input {input_key!r} is already awaited by mission {mission_id}")
        self.input_key = input_key
        self.mission_id = mission_id


def _condition_failed(error: PynamoDBException) -> bool:
    if isinstance(error, TransactWriteError):
        return any(
            r is not None and r.code == "ConditionalCheckFailed"
            for r in (error.cancellation_reasons or [])
        )
    return error.cause_response_code == _CONDITION_FAILED


def utcnow(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


class Store:
    def __init__(self, settings: Settings) -> None:
        bind_tables(settings)
        # One connection for all transactions: each new one would build a new botocore client.
        self._connection = Connection(region=settings.region)

    def _transaction(self) -> TransactWrite:
        return TransactWrite(connection=self._connection)

    # ---- missions -------------------------------------------------------------------------

    def create_mission(self, mission: MissionModel) -> None:
        """Store a new mission and register it as the one awaiting its input, atomically."""
        binding = InputModel(mission.input_key, mission_id=mission.mission_id)
        mission.needs_care = NEEDS_CARE
        try:
            with self._transaction() as tx:
                tx.save(mission, condition=MissionModel.mission_id.does_not_exist())
                tx.save(binding, condition=InputModel.input_key.does_not_exist())
        except TransactWriteError as e:
            if _condition_failed(e):
                raise InputBusy(mission.input_key, self.mission_awaiting(mission.input_key)) from e
            raise StoreError(f"could not store mission: {e}") from e

    def get_mission(self, mission_id: str) -> MissionModel:
        try:
            return MissionModel.get(mission_id, consistent_read=True)
        except DoesNotExist as e:
            raise NotFound(f"no mission {mission_id!r}") from e
        except PynamoDBException as e:
            raise StoreError(f"could not read mission {mission_id}: {e}") from e

    def list_missions(self, limit: int) -> list[MissionModel]:
        """The newest `limit` missions, newest first: one index query and one batch read."""
        try:
            newest = MissionModel.by_creation.query(LISTED, scan_index_forward=False, limit=limit)
            missions = list(MissionModel.batch_get([m.mission_id for m in newest]))
        except PynamoDBException as e:
            raise StoreError(f"could not list missions: {e}") from e
        missions.sort(key=lambda m: m.created_at, reverse=True)
        return missions

    def mission_awaiting(self, input_key: str) -> str | None:
        try:
            return InputModel.get(input_key, consistent_read=True).mission_id
        except DoesNotExist:
            return None
        except PynamoDBException as e:
            raise StoreError(f"could not read input binding: {e}") from e

    def begin_planning(
        self, mission_id: str, now: float, lease_seconds: int
    ) -> MissionModel | None:
        """Take the right to plan: exactly one caller wins, however many events arrive.

        A mission awaiting its input moves to PLANNING. A planner that died mid-way left PLANNING
        with a lease; once that lease has expired a redelivered event takes over (the input
        binding is kept until planning ends, so a redelivered S3 event still finds the mission).
        Returns None if the mission is not startable or someone else holds the lease.
        """
        awaiting = MissionModel.status == MissionStatus.AWAITING_INPUT.value
        stale = (MissionModel.status == MissionStatus.PLANNING.value) & (
            MissionModel.planning_lease_until < now
        )
        try:
            return self._update_mission(
                mission_id,
                [
                    MissionModel.status.set(MissionStatus.PLANNING.value),
                    MissionModel.planning_lease_until.set(now + lease_seconds),
                    MissionModel.started_at.set(utcnow(now)),
                ],
                condition=awaiting | stale,
            )
        except Conflict:
            return None

    def record_input(self, mission_id: str, etag: str, size: int) -> None:
        self._update_mission(
            mission_id,
            [MissionModel.input_etag.set(etag), MissionModel.input_bytes.set(size)],
        )

    def mark_running(
        self,
        mission: MissionModel,
        plan: Plan,
        n_instances: int,
        launch_errors: str | None,
        now: float,
    ) -> None:
        """PLANNING -> RUNNING with the plan: no item per transaction is written (see claims)."""
        lines = [] if plan.total_lines is None else [MissionModel.n_lines.set(plan.total_lines)]
        self._end_planning(
            mission,
            MissionStatus.RUNNING,
            [
                *lines,
                MissionModel.n_total.set(plan.count),
                MissionModel.n_instances.set(n_instances),
                MissionModel.launch_errors.set(launch_errors)
                if launch_errors
                else MissionModel.launch_errors.remove(),
                MissionModel.running_at.set(utcnow(now)),
            ],
        )

    def fail_planning(self, mission: MissionModel, reason: str, now: float) -> None:
        """Fail a mission whose input cannot be planned (empty, missing, too large...)."""
        self._end_planning(
            mission,
            MissionStatus.FAILED,
            [MissionModel.error.set(reason), MissionModel.finished_at.set(utcnow(now))],
        )

    def cancel_mission(self, mission: MissionModel, now: float) -> None:
        """Cancel a mission that has not finished; Conflict if it already has."""
        self._leave_and_release(
            mission,
            MissionStatus.CANCELLED,
            [
                MissionModel.error.set("cancelled by request"),
                MissionModel.finished_at.set(utcnow(now)),
                MissionModel.planning_lease_until.remove(),
            ],
            sources=mission_sources(MissionStatus.CANCELLED),
        )

    def expire_awaiting(self, mission: MissionModel, reason: str, now: float) -> bool:
        """Fail a mission whose input never came; False if it started or ended meanwhile."""
        try:
            self._leave_and_release(
                mission,
                MissionStatus.FAILED,
                [MissionModel.error.set(reason), MissionModel.finished_at.set(utcnow(now))],
                sources=[MissionStatus.AWAITING_INPUT.value],
            )
        except Conflict:
            return False
        return True

    def _end_planning(self, mission: MissionModel, target: MissionStatus, actions: list) -> None:
        self._leave_and_release(
            mission,
            target,
            [MissionModel.planning_lease_until.remove(), *actions],
            sources=[MissionStatus.PLANNING.value],
        )

    def _leave_and_release(
        self,
        mission: MissionModel,
        target: MissionStatus,
        actions: list,
        sources: list[str],
    ) -> None:
        """Move the mission to `target` and release its input key for later configs, atomically."""
        try:
            with self._transaction() as tx:
                tx.update(
                    MissionModel(mission.mission_id),
                    actions=[MissionModel.status.set(target.value), *actions],
                    condition=MissionModel.status.is_in(*sources),
                )
                tx.delete(
                    InputModel(mission.input_key),
                    condition=InputModel.input_key.does_not_exist()
                    | (InputModel.mission_id == mission.mission_id),
                )
        except TransactWriteError as e:
            if _condition_failed(e):
                raise Conflict(
                    f"mission {mission.mission_id} cannot become {target.value} from its state"
                ) from e
            raise StoreError(f"could not update mission {mission.mission_id}: {e}") from e

    def finish_mission(
        self,
        mission_id: str,
        status: MissionStatus,
        result_key: str | None,
        usage: tuple[float, float],
        now: float,
    ) -> bool:
        """RUNNING -> SUCCEEDED/FAILED, once. False if another event already finished it."""
        try:
            self._transition_mission(
                mission_id,
                status,
                [
                    MissionModel.result_key.set(result_key)
                    if result_key
                    else MissionModel.result_key.remove(),
                    MissionModel.finished_at.set(utcnow(now)),
                    MissionModel.instance_seconds.set(usage[0]),
                    MissionModel.estimated_cost.set(usage[1]),
                ],
                only_from=[MissionStatus.RUNNING.value],
            )
        except Conflict:
            return False
        return True

    def claim_notification(self, mission_id: str, now: float, lease_seconds: int) -> bool:
        """The right to send the completion email: one holder at a time, until it is sent.

        If the holder fails to publish, its lease runs out and a redelivered event sends it.
        """
        free = MissionModel.notify_lease_until.does_not_exist() | (
            MissionModel.notify_lease_until < now
        )
        try:
            self._update_mission(
                mission_id,
                [MissionModel.notify_lease_until.set(now + lease_seconds)],
                condition=MissionModel.notified_at.does_not_exist() & free,
            )
        except Conflict:
            return False
        return True

    def mark_notified(self, mission_id: str, now: float) -> None:
        self._update_mission(
            mission_id,
            # Off the care index: the sweeper has nothing left to do for it.
            [MissionModel.notified_at.set(utcnow(now)), MissionModel.needs_care.remove()],
            condition=MissionModel.notified_at.does_not_exist(),
        )

    def add_instance_usage(self, mission_id: str, seconds: float, cost: float) -> None:
        """A worker's life, reported when it ends."""
        self._update_mission(
            mission_id,
            [MissionModel.instance_seconds.add(seconds), MissionModel.estimated_cost.add(cost)],
        )

    def fail_mission(self, mission_id: str, reason: str, now: float) -> bool:
        """RUNNING -> FAILED for the mission as a whole (timed out); False if already finished."""
        try:
            self._transition_mission(
                mission_id,
                MissionStatus.FAILED,
                [MissionModel.error.set(reason), MissionModel.finished_at.set(utcnow(now))],
                only_from=[MissionStatus.RUNNING.value],
            )
        except Conflict:
            return False
        return True

    def record_relaunch(self, mission_id: str, instances: int, errors: str | None) -> None:
        actions = [
            MissionModel.n_instances.add(instances),
            MissionModel.relaunches.add(1),
            MissionModel.launch_errors.set(errors)
            if errors
            else MissionModel.launch_errors.remove(),
        ]
        self._update_mission(mission_id, actions)

    def claim_replacement(self, mission_id: str, instance_id: str) -> bool:
        """The right to replace an interrupted instance, once (EC2 client tokens do that on AWS,
        but not in moto, and a conditional write is cheaper than trusting either)."""
        try:
            self._update_mission(
                mission_id,
                [MissionModel.replaced_instances.add({instance_id})],
                condition=~MissionModel.replaced_instances.contains(instance_id),
            )
        except Conflict:
            return False
        return True

    def missions_needing_care(self) -> list[MissionModel]:
        """Missions the sweeper looks at: unfinished ones, and finished ones not yet mailed.

        The sparse care index names them (every mission from creation until its email is sent);
        the missions themselves are read consistently, as the sweeper acts on their state.
        """
        try:
            keys = [m.mission_id for m in MissionModel.needing_care.query(NEEDS_CARE)]
            missions = list(MissionModel.batch_get(keys, consistent_read=True))
        except PynamoDBException as e:
            raise StoreError(f"could not read the missions needing care: {e}") from e
        missions.sort(key=lambda m: m.mission_id)
        return [
            m
            for m in missions
            if MissionStatus(m.status) not in TERMINAL_MISSION or m.notified_at is None
        ]

    def _transition_mission(
        self,
        mission_id: str,
        target: MissionStatus,
        actions: list,
        only_from: list[str] | None = None,
    ) -> None:
        sources = only_from or mission_sources(target)
        self._update_mission(
            mission_id,
            [MissionModel.status.set(target.value), *actions],
            condition=MissionModel.status.is_in(*sources),
        )

    def _update_mission(
        self, mission_id: str, actions: list, condition: Condition | None = None
    ) -> MissionModel:
        mission = MissionModel(mission_id)
        exists = MissionModel.mission_id.exists()
        try:
            mission.update(
                actions=actions, condition=exists if condition is None else exists & condition
            )
        except PynamoDBException as e:
            if _condition_failed(e):
                raise Conflict(f"mission {mission_id} is not in the expected state") from e
            raise StoreError(f"could not update mission {mission_id}: {e}") from e
        return mission

    # ---- transactions ---------------------------------------------------------------------

    def transactions(
        self, mission_id: str, first: int | None = None, last: int | None = None
    ) -> Iterator[TransactionModel]:
        """The claimed transactions of a mission (all, or indexes first..last), in index order."""
        condition = None
        if first is not None and last is not None:
            condition = TransactionModel.index.between(first, last)
        try:
            yield from TransactionModel.query(mission_id, condition, consistent_read=True)
        except PynamoDBException as e:
            raise StoreError(f"could not read transactions of {mission_id}: {e}") from e

    def claim_next(
        self,
        mission_id: str,
        owner: str,
        now: float,
        lease_seconds: int,
        slice_of: Callable[[int], Slice],
    ) -> TransactionModel | None:
        """Claim a transaction in O(1) calls: never-claimed ones via the cursor, then retries.

        The cursor (an atomic ADD on the mission) hands each worker a distinct index; the
        transaction's item is created right then from the plan (`slice_of`), so planning writes
        nothing per transaction and no query grows with the mission. Transactions sent back for
        another attempt are found through the sparse retry index.
        """
        while True:
            index = self._advance_cursor(mission_id)
            if index is None:
                break
            claimed = self._claim(
                mission_id, index, owner, now, lease_seconds, first=slice_of(index)
            )
            if claimed is not None:
                return claimed
        try:
            waiting = list(TransactionModel.retry_index.query(mission_id, limit=10))
        except PynamoDBException as e:
            raise StoreError(f"could not look for retries in {mission_id}: {e}") from e
        for item in waiting:
            claimed = self._claim(mission_id, int(item.index), owner, now, lease_seconds)
            if claimed is not None:
                return claimed
        return None

    def _advance_cursor(self, mission_id: str) -> int | None:
        mission = MissionModel(mission_id)
        try:
            mission.update(
                actions=[MissionModel.next_index.add(1)],
                condition=(MissionModel.status == MissionStatus.RUNNING.value)
                & (MissionModel.next_index < MissionModel.n_total),
            )
        except PynamoDBException as e:
            if _condition_failed(e):
                return None
            raise StoreError(f"could not advance the claim cursor of {mission_id}: {e}") from e
        return int(mission.next_index) - 1

    def _claim(
        self,
        mission_id: str,
        index: int,
        owner: str,
        now: float,
        lease_seconds: int,
        first: Slice | None = None,
    ) -> TransactionModel | None:
        """PENDING -> RUNNING; with `first`, create the never-claimed transaction's item."""
        txn = TransactionModel(mission_id, index)
        actions = [
            TransactionModel.status.set(TransactionStatus.RUNNING.value),
            TransactionModel.lease_owner.set(owner),
            TransactionModel.lease_expires_at.set(now + lease_seconds),
            TransactionModel.started_at.set(utcnow(now)),
            TransactionModel.attempts.add(1),
            TransactionModel.retry_rank.remove(),
        ]
        if first is not None:
            actions += [
                TransactionModel.start.set(first.start),
                TransactionModel.end.set(first.end),
            ]
            condition = TransactionModel.index.does_not_exist()
        else:
            condition = TransactionModel.status.is_in(
                *transaction_sources(TransactionStatus.RUNNING)
            )
        try:
            txn.update(actions=actions, condition=condition)
        except PynamoDBException as e:
            if _condition_failed(e):
                return None
            raise StoreError(f"could not claim transaction {index} of {mission_id}: {e}") from e
        return txn

    def requeue(
        self,
        txn: TransactionModel,
        owner: str,
        exit_code: int | None,
        error: str,
        now: float,
    ) -> None:
        """Hand a failed attempt back for another try (by any worker)."""
        self._update_transaction(
            txn,
            TransactionStatus.PENDING,
            owner,
            [
                TransactionModel.exit_code.set(exit_code),
                TransactionModel.error.set(error),
                TransactionModel.retry_rank.set(int(now * 1000)),
                TransactionModel.lease_owner.remove(),
                TransactionModel.lease_expires_at.remove(),
            ],
        )

    def finish_transaction(
        self,
        txn: TransactionModel,
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
        with contextlib.suppress(Conflict):
            self._update_transaction(
                txn,
                status,
                owner,
                also_from=status,
                actions=[
                    TransactionModel.exit_code.set(exit_code),
                    TransactionModel.error.set(error),
                    TransactionModel.run_seconds.set(run_seconds),
                    TransactionModel.part_key.set(part_key),
                    TransactionModel.finished_at.set(utcnow(now)),
                    TransactionModel.lease_expires_at.remove(),
                ],
            )

    def _update_transaction(
        self,
        txn: TransactionModel,
        target: TransactionStatus,
        owner: str,
        actions: list,
        also_from: TransactionStatus | None = None,
    ) -> None:
        sources = transaction_sources(target) + ([also_from.value] if also_from else [])
        condition = TransactionModel.status.is_in(*sources) & (
            TransactionModel.lease_owner == owner
        )
        try:
            txn.update(
                actions=[TransactionModel.status.set(target.value), *actions], condition=condition
            )
        except PynamoDBException as e:
            if _condition_failed(e):
                raise Conflict(f"transaction {txn.index} is no longer held by {owner}") from e
            raise StoreError(f"could not update transaction {txn.index}: {e}") from e

    def extend_lease(
        self, txn: TransactionModel, owner: str, now: float, lease_seconds: int
    ) -> bool:
        """The heartbeat. False if the lease is no longer ours (expired and taken back)."""
        try:
            txn.update(
                actions=[TransactionModel.lease_expires_at.set(now + lease_seconds)],
                condition=(TransactionModel.status == TransactionStatus.RUNNING.value)
                & (TransactionModel.lease_owner == owner),
            )
        except PynamoDBException as e:
            if _condition_failed(e):
                return False
            raise StoreError(f"could not extend the lease of {txn.index}: {e}") from e
        return True

    def hand_back(self, txn: TransactionModel, owner: str, now: float, reason: str) -> None:
        """Give a transaction back without spending an attempt (Spot interruption, shutdown)."""
        self._update_transaction(
            txn,
            TransactionStatus.PENDING,
            owner,
            [
                TransactionModel.attempts.add(-1),
                TransactionModel.error.set(reason),
                TransactionModel.retry_rank.set(int(now * 1000)),
                TransactionModel.lease_owner.remove(),
                TransactionModel.lease_expires_at.remove(),
            ],
        )

    def leased_transactions(
        self, mission_id: str, expiring_before: float | None = None
    ) -> list[TransactionModel]:
        """Running transactions (all, or those whose lease expires before a time), fresh."""
        condition = None
        if expiring_before is not None:
            condition = TransactionModel.lease_expires_at < expiring_before
        try:
            keys = list(TransactionModel.lease_index.query(mission_id, condition))
            return [
                t
                for t in (self._fresh(mission_id, int(k.index)) for k in keys)
                if t is not None and t.status == TransactionStatus.RUNNING.value
            ]
        except PynamoDBException as e:
            raise StoreError(f"could not read leases of {mission_id}: {e}") from e

    def _fresh(self, mission_id: str, index: int) -> TransactionModel | None:
        try:
            return TransactionModel.get(mission_id, index, consistent_read=True)
        except DoesNotExist:
            return None

    def take_back_expired(
        self, txn: TransactionModel, now: float, reason: str, requeue: bool
    ) -> bool:
        """Take an expired lease back: requeue the transaction, or just drop the lease when it
        is out of attempts (its failure marker then reports it). False if the worker came back
        or someone else got there first."""
        actions = [
            TransactionModel.lease_owner.remove(),
            TransactionModel.lease_expires_at.remove(),
            TransactionModel.error.set(reason),
        ]
        if requeue:
            actions += [
                TransactionModel.status.set(TransactionStatus.PENDING.value),
                TransactionModel.retry_rank.set(int(now * 1000)),
            ]
        try:
            txn.update(
                actions=actions,
                condition=(TransactionModel.status == TransactionStatus.RUNNING.value)
                & (TransactionModel.lease_owner == txn.lease_owner)
                & (TransactionModel.lease_expires_at < now),
            )
        except PynamoDBException as e:
            if _condition_failed(e):
                return False
            raise StoreError(f"could not take back transaction {txn.index}: {e}") from e
        return True

    def requeue_lost_claims(
        self, mission: MissionModel, slice_of: Callable[[int], Slice], now: float
    ) -> list[int]:
        """Indexes the cursor handed out whose claim never landed (the worker died between the
        cursor's ADD and the item's creation): create them as retries. Only called when no
        transaction is leased, so no live claim can be half-way."""
        handed_out = int(mission.next_index or 0)
        try:
            present = {
                int(t.index)
                for t in TransactionModel.query(
                    mission.mission_id,
                    consistent_read=True,
                    attributes_to_get=["mission_id", "index"],
                )
            }
        except PynamoDBException as e:
            raise StoreError(f"could not list transactions of {mission.mission_id}: {e}") from e
        requeued = []
        for index in sorted(set(range(handed_out)) - present):
            s = slice_of(index)
            txn = TransactionModel(
                mission.mission_id,
                index,
                status=TransactionStatus.PENDING.value,
                start=s.start,
                end=s.end,
                attempts=0,
                retry_rank=int(now * 1000),
                error="claim lost: its worker ended before the claim was written",
            )
            try:
                txn.save(condition=TransactionModel.index.does_not_exist())
            except PynamoDBException as e:
                if _condition_failed(e):
                    continue
                raise StoreError(f"could not requeue transaction {index}: {e}") from e
            requeued.append(index)
        return requeued

    def oldest_retry_rank(self, mission_id: str) -> int | None:
        """When (epoch ms) the longest-waiting retry was queued, or None if none waits."""
        try:
            for item in TransactionModel.retry_index.query(mission_id, limit=1):
                return int(item.retry_rank)
        except PynamoDBException as e:
            raise StoreError(f"could not look for retries in {mission_id}: {e}") from e
        return None

    def has_work_left(self, mission: MissionModel) -> bool:
        """Transactions never claimed, or waiting for a retry."""
        if int(mission.next_index or 0) < int(mission.n_total or 0):
            return True
        try:
            return any(
                True for _ in TransactionModel.retry_index.query(mission.mission_id, limit=1)
            )
        except PynamoDBException as e:
            raise StoreError(f"could not look for retries in {mission.mission_id}: {e}") from e

    def count_outcome(
        self,
        mission_id: str,
        index: int,
        succeeded: bool,
        part_key: str,
        exit_code: int | None = None,
        error: str | None = None,
    ) -> bool:
        """Count a transaction's outcome exactly once. False if it was already counted."""
        status = TransactionStatus.SUCCEEDED if succeeded else TransactionStatus.FAILED
        counter = MissionModel.n_succeeded if succeeded else MissionModel.n_failed
        txn_actions = [
            TransactionModel.counted.set(True),
            TransactionModel.status.set(status.value),
            # lease_owner stays: who ran it, and the worker's own finish still matches it.
            TransactionModel.lease_expires_at.remove(),
            TransactionModel.retry_rank.remove(),
        ]
        if succeeded:
            txn_actions.append(TransactionModel.part_key.set(part_key))
        else:
            txn_actions += [
                TransactionModel.exit_code.set(exit_code),
                TransactionModel.error.set(error),
            ]
        try:
            with self._transaction() as tx:
                tx.update(
                    TransactionModel(mission_id, index),
                    actions=txn_actions,
                    condition=TransactionModel.index.exists()
                    & TransactionModel.counted.does_not_exist(),
                )
                tx.update(
                    MissionModel(mission_id),
                    actions=[counter.add(1)],
                    condition=MissionModel.status == MissionStatus.RUNNING.value,
                )
        except TransactWriteError as e:
            if _condition_failed(e):
                return False
            raise StoreError(f"could not count transaction {index} of {mission_id}: {e}") from e
        return True
