"""Statuses shared by the Lambdas and the worker, and the transitions allowed between them.

The tables are the state machine, and they are enforced: every conditional write that changes a
status takes its allowed sources from `mission_sources` / `transaction_sources`, which refuse
(IllegalTransition) a narrowing the table does not allow. So a write path can only ever be
narrower than the table, never wider.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from enum import StrEnum


class MissionStatus(StrEnum):
    AWAITING_INPUT = "AWAITING_INPUT"  # config stored, input not yet seen (or its upstream's)
    PLANNING = "PLANNING"  # one scheduler holds the planning lease
    RUNNING = "RUNNING"  # transactions recorded, workers launched
    # every transaction succeeded and the parts are merged; the config's reduce runs on a worker
    # as a mission of its own (`chalicelib.stages`), whose output becomes this one's result
    REDUCING = "REDUCING"
    SUCCEEDED = "SUCCEEDED"  # every transaction succeeded; result merged; email sent
    FAILED = "FAILED"  # the input was unusable or some transaction failed for good
    CANCELLED = "CANCELLED"  # DELETE /missions/{id}: no new claims, instances terminated


class TransactionStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"  # its mission was cancelled before its outcome counted


TERMINAL_MISSION = frozenset(
    {MissionStatus.SUCCEEDED, MissionStatus.FAILED, MissionStatus.CANCELLED}
)

MISSION_TRANSITIONS: dict[MissionStatus, frozenset[MissionStatus]] = {
    # AWAITING_INPUT -> FAILED: the input never arrived within the mission's deadline.
    MissionStatus.AWAITING_INPUT: frozenset(
        {MissionStatus.PLANNING, MissionStatus.FAILED, MissionStatus.CANCELLED}
    ),
    # PLANNING -> PLANNING: a redelivered event takes over an expired planning lease.
    MissionStatus.PLANNING: frozenset(
        {
            MissionStatus.PLANNING,
            MissionStatus.RUNNING,
            MissionStatus.FAILED,
            MissionStatus.CANCELLED,
        }
    ),
    MissionStatus.RUNNING: frozenset(
        {
            MissionStatus.REDUCING,
            MissionStatus.SUCCEEDED,
            MissionStatus.FAILED,
            MissionStatus.CANCELLED,
        }
    ),
    MissionStatus.REDUCING: frozenset(
        {MissionStatus.SUCCEEDED, MissionStatus.FAILED, MissionStatus.CANCELLED}
    ),
    MissionStatus.SUCCEEDED: frozenset(),
    MissionStatus.FAILED: frozenset(),
    MissionStatus.CANCELLED: frozenset(),
}

# A transaction without an item is PENDING (never claimed): creating its item is a move from
# PENDING.
TRANSACTION_TRANSITIONS: dict[TransactionStatus, frozenset[TransactionStatus]] = {
    # PENDING -> CANCELLED: by construction (`shown_status`) once its mission is cancelled.
    TransactionStatus.PENDING: frozenset({TransactionStatus.RUNNING, TransactionStatus.CANCELLED}),
    # RUNNING -> PENDING: a failed attempt with attempts left goes back to the queue.
    # RUNNING -> CANCELLED: the lease of a cancelled mission, settled by its worker or the sweeper.
    TransactionStatus.RUNNING: frozenset(
        {
            TransactionStatus.PENDING,
            TransactionStatus.SUCCEEDED,
            TransactionStatus.FAILED,
            TransactionStatus.CANCELLED,
        }
    ),
    TransactionStatus.SUCCEEDED: frozenset(),
    TransactionStatus.FAILED: frozenset(),
    TransactionStatus.CANCELLED: frozenset(),
}


class IllegalTransition(ValueError):
    """A write asked for a move the state table does not allow: a programming error."""


def mission_sources(
    target: MissionStatus, only_from: Iterable[MissionStatus] | None = None
) -> list[str]:
    """The statuses a conditional write that moves a mission to `target` may find it in.

    `only_from` narrows the table's sources for one write path (a timeout fails only RUNNING
    missions); a source the table does not allow raises IllegalTransition.
    """
    return _sources(MISSION_TRANSITIONS, target, only_from, "mission")


def transaction_sources(
    target: TransactionStatus,
    only_from: Iterable[TransactionStatus] | None = None,
    *,
    or_already: bool = False,
) -> list[str]:
    """As `mission_sources`, for transactions. `or_already`: the write also applies when the
    transaction already has `target` (two writers record one outcome: the worker and
    result_processor; whichever comes second adds its details without changing the status)."""
    sources = _sources(TRANSACTION_TRANSITIONS, target, only_from, "transaction")
    return [*sources, target.value] if or_already else sources


def _sources(
    table: dict,
    target: StrEnum,
    only_from: Iterable[StrEnum] | None,
    kind: str,
) -> list[str]:
    allowed = [s for s, targets in table.items() if target in targets]
    if only_from is None:
        return [s.value for s in allowed]
    chosen = list(only_from)
    for source in chosen:
        if source not in allowed:
            raise IllegalTransition(f"{kind} cannot go from {source.value} to {target.value}")
    return [s.value for s in chosen]


def after_failed_attempt(
    attempts: int,
    max_attempts: int,
    exit_code: int | None = None,
    rules: Sequence[tuple[str, str]] = (),
) -> TransactionStatus:
    """Retry while attempts remain, unless an exit-code rule says to fail at once.

    Rules are (exit-code glob, "retry" | "fail") pairs; the first that matches the exit code
    decides, as AWS Batch's `evaluateOnExit` does; no match means retry.
    """
    if attempts >= max_attempts:
        return TransactionStatus.FAILED
    if exit_code is not None:
        for pattern, action in rules:
            if fnmatch.fnmatchcase(str(exit_code), pattern):
                return TransactionStatus.FAILED if action == "fail" else TransactionStatus.PENDING
    return TransactionStatus.PENDING


def mission_outcome(succeeded: int, failed: int, total: int) -> MissionStatus | None:
    """The final status once every transaction is terminal, else None."""
    if succeeded + failed < total:
        return None
    return MissionStatus.SUCCEEDED if failed == 0 else MissionStatus.FAILED


def shown_status(
    status: TransactionStatus, counted: bool, mission: MissionStatus
) -> TransactionStatus:
    """A transaction's status as the API and the email tell it.

    In a cancelled mission only an outcome counted before the cancel stands (counting needs the
    mission RUNNING, in the same DynamoDB transaction as the cancel's own condition, so these
    are exactly the mission's counters); every other transaction is CANCELLED: never claimed,
    waiting for a retry, still leased, or finished too late to count. Elsewhere, as stored.
    """
    if mission is MissionStatus.CANCELLED and not (
        counted and status in (TransactionStatus.SUCCEEDED, TransactionStatus.FAILED)
    ):
        return TransactionStatus.CANCELLED
    return status
