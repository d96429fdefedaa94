"""Statuses shared by the Lambdas and the worker, and the transitions allowed between them."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from enum import StrEnum


class MissionStatus(StrEnum):
    AWAITING_INPUT = "AWAITING_INPUT"  # config stored, input not yet seen
    PLANNING = "PLANNING"  # one scheduler holds the planning lease
    RUNNING = "RUNNING"  # transactions recorded, workers launched
    SUCCEEDED = "SUCCEEDED"  # every transaction succeeded; result merged; email sent
    FAILED = "FAILED"  # the input was unusable or some transaction failed for good
    CANCELLED = "CANCELLED"  # DELETE /missions/{id}: no new claims, instances terminated


class TransactionStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


TERMINAL_MISSION = frozenset(
    {MissionStatus.SUCCEEDED, MissionStatus.FAILED, MissionStatus.CANCELLED}
)
TERMINAL_TRANSACTION = frozenset({TransactionStatus.SUCCEEDED, TransactionStatus.FAILED})

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
        {MissionStatus.SUCCEEDED, MissionStatus.FAILED, MissionStatus.CANCELLED}
    ),
    MissionStatus.SUCCEEDED: frozenset(),
    MissionStatus.FAILED: frozenset(),
    MissionStatus.CANCELLED: frozenset(),
}

TRANSACTION_TRANSITIONS: dict[TransactionStatus, frozenset[TransactionStatus]] = {
    TransactionStatus.PENDING: frozenset({TransactionStatus.RUNNING}),
    # RUNNING -> PENDING: a failed attempt with attempts left goes back to the queue.
    TransactionStatus.RUNNING: frozenset(
        {TransactionStatus.PENDING, TransactionStatus.SUCCEEDED, TransactionStatus.FAILED}
    ),
    TransactionStatus.SUCCEEDED: frozenset(),
    TransactionStatus.FAILED: frozenset(),
}


class IllegalTransition(ValueError):
    pass


def check_mission_transition(current: MissionStatus, target: MissionStatus) -> None:
    if target not in MISSION_TRANSITIONS[current]:
        raise IllegalTransition(f"mission cannot go from {current.value} to {target.value}")


def check_transaction_transition(current: TransactionStatus, target: TransactionStatus) -> None:
    if target not in TRANSACTION_TRANSITIONS[current]:
        raise IllegalTransition(f"transaction cannot go from {current.value} to {target.value}")


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


def mission_sources(target: MissionStatus) -> list[str]:
    """Statuses a mission may be in for a conditional write that moves it to `target`."""
    return [s.value for s, targets in MISSION_TRANSITIONS.items() if target in targets]


def transaction_sources(target: TransactionStatus) -> list[str]:
    return [s.value for s, targets in TRANSACTION_TRANSITIONS.items() if target in targets]
