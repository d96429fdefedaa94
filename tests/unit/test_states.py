"""states: the transition tables and the helpers derived from them."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from chalicelib.states import (
    MISSION_TRANSITIONS,
    TERMINAL_MISSION,
    TERMINAL_TRANSACTION,
    TRANSACTION_TRANSITIONS,
    IllegalTransition,
    MissionStatus,
    TransactionStatus,
    after_failed_attempt,
    check_mission_transition,
    check_transaction_transition,
    mission_outcome,
    mission_sources,
    transaction_sources,
)

M = MissionStatus
T = TransactionStatus

LEGAL_MISSION = {
    (M.AWAITING_INPUT, M.PLANNING),
    (M.PLANNING, M.PLANNING),
    (M.PLANNING, M.RUNNING),
    (M.PLANNING, M.FAILED),
    (M.RUNNING, M.SUCCEEDED),
    (M.RUNNING, M.FAILED),
    (M.AWAITING_INPUT, M.CANCELLED),
    (M.AWAITING_INPUT, M.FAILED),
    (M.PLANNING, M.CANCELLED),
    (M.RUNNING, M.CANCELLED),
}
LEGAL_TRANSACTION = {
    (T.PENDING, T.RUNNING),
    (T.RUNNING, T.PENDING),
    (T.RUNNING, T.SUCCEEDED),
    (T.RUNNING, T.FAILED),
}


def test_tables_cover_every_status() -> None:
    assert set(MISSION_TRANSITIONS) == set(MissionStatus)
    assert set(TRANSACTION_TRANSITIONS) == set(TransactionStatus)


def test_tables_are_exactly_the_documented_transitions() -> None:
    assert {(s, t) for s, ts in MISSION_TRANSITIONS.items() for t in ts} == LEGAL_MISSION
    assert {(s, t) for s, ts in TRANSACTION_TRANSITIONS.items() for t in ts} == LEGAL_TRANSACTION


@pytest.mark.parametrize(("current", "target"), sorted(LEGAL_MISSION))
def test_legal_mission_transitions(current: MissionStatus, target: MissionStatus) -> None:
    check_mission_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"), sorted(set(itertools.product(M, M)) - LEGAL_MISSION)
)
def test_illegal_mission_transitions(current: MissionStatus, target: MissionStatus) -> None:
    with pytest.raises(IllegalTransition, match=f"from {current.value} to {target.value}"):
        check_mission_transition(current, target)


@pytest.mark.parametrize(("current", "target"), sorted(LEGAL_TRANSACTION))
def test_legal_transaction_transitions(
    current: TransactionStatus, target: TransactionStatus
) -> None:
    check_transaction_transition(current, target)


@pytest.mark.parametrize(
    ("current", "target"), sorted(set(itertools.product(T, T)) - LEGAL_TRANSACTION)
)
def test_illegal_transaction_transitions(
    current: TransactionStatus, target: TransactionStatus
) -> None:
    with pytest.raises(IllegalTransition, match=f"from {current.value} to {target.value}"):
        check_transaction_transition(current, target)


@pytest.mark.parametrize(
    "check",
    [
        lambda: check_mission_transition(M.SUCCEEDED, M.RUNNING),
        lambda: check_mission_transition(M.AWAITING_INPUT, M.RUNNING),
        lambda: check_mission_transition(M.FAILED, M.PLANNING),
        lambda: check_mission_transition(M.RUNNING, M.RUNNING),
        lambda: check_transaction_transition(T.PENDING, T.SUCCEEDED),
        lambda: check_transaction_transition(T.SUCCEEDED, T.RUNNING),
        lambda: check_transaction_transition(T.FAILED, T.PENDING),
    ],
    ids=[
        "mission-SUCCEEDED-RUNNING",
        "mission-AWAITING_INPUT-RUNNING",
        "mission-FAILED-PLANNING",
        "mission-RUNNING-RUNNING",
        "txn-PENDING-SUCCEEDED",
        "txn-SUCCEEDED-RUNNING",
        "txn-FAILED-PENDING",
    ],
)
def test_named_illegal_transitions(check: Callable[[], None]) -> None:
    with pytest.raises(IllegalTransition):
        check()


def test_illegal_transition_is_a_value_error() -> None:
    assert issubclass(IllegalTransition, ValueError)


def test_terminal_states_have_no_exits() -> None:
    assert {M.SUCCEEDED, M.FAILED, M.CANCELLED} == TERMINAL_MISSION
    assert {T.SUCCEEDED, T.FAILED} == TERMINAL_TRANSACTION
    for status in TERMINAL_MISSION:
        assert MISSION_TRANSITIONS[status] == frozenset()
    for status in TERMINAL_TRANSACTION:
        assert TRANSACTION_TRANSITIONS[status] == frozenset()
    # ... and every non-terminal state has a way out.
    assert all(MISSION_TRANSITIONS[s] for s in set(M) - TERMINAL_MISSION)
    assert all(TRANSACTION_TRANSITIONS[s] for s in set(T) - TERMINAL_TRANSACTION)


def test_every_terminal_state_is_reachable() -> None:
    reached = {M.AWAITING_INPUT}
    while True:
        more = reached | {t for s in reached for t in MISSION_TRANSITIONS[s]}
        if more == reached:
            break
        reached = more
    assert reached == set(M)


@pytest.mark.parametrize(
    ("attempts", "max_attempts", "expected"),
    [(1, 3, T.PENDING), (2, 3, T.PENDING), (3, 3, T.FAILED), (4, 3, T.FAILED), (1, 1, T.FAILED)],
)
def test_after_failed_attempt(
    attempts: int, max_attempts: int, expected: TransactionStatus
) -> None:
    assert after_failed_attempt(attempts, max_attempts) is expected


def test_after_failed_attempt_is_a_legal_move_from_running() -> None:
    for attempts in range(1, 5):
        check_transaction_transition(T.RUNNING, after_failed_attempt(attempts, 3))


@pytest.mark.parametrize(
    ("succeeded", "failed", "total", "expected"),
    [
        (0, 0, 3, None),
        (2, 0, 3, None),
        (1, 1, 3, None),
        (3, 0, 3, M.SUCCEEDED),
        (2, 1, 3, M.FAILED),
        (0, 3, 3, M.FAILED),
        (1, 0, 1, M.SUCCEEDED),
        (0, 0, 0, M.SUCCEEDED),
    ],
)
def test_mission_outcome(
    succeeded: int, failed: int, total: int, expected: MissionStatus | None
) -> None:
    assert mission_outcome(succeeded, failed, total) == expected


def test_mission_sources() -> None:
    assert mission_sources(M.PLANNING) == ["AWAITING_INPUT", "PLANNING"]
    assert mission_sources(M.RUNNING) == ["PLANNING"]
    assert mission_sources(M.SUCCEEDED) == ["RUNNING"]
    assert mission_sources(M.FAILED) == ["AWAITING_INPUT", "PLANNING", "RUNNING"]
    assert mission_sources(M.AWAITING_INPUT) == []


def test_transaction_sources() -> None:
    assert transaction_sources(T.RUNNING) == ["PENDING"]
    assert transaction_sources(T.PENDING) == ["RUNNING"]
    assert transaction_sources(T.SUCCEEDED) == ["RUNNING"]
    assert transaction_sources(T.FAILED) == ["RUNNING"]


def test_sources_agree_with_the_checks() -> None:
    for target in M:
        for source in M:
            legal = source.value in mission_sources(target)
            assert legal == ((source, target) in LEGAL_MISSION)
    for target in T:
        assert all(isinstance(s, str) for s in transaction_sources(target))
        for source in T:
            assert (source.value in transaction_sources(target)) == (
                (source, target) in LEGAL_TRANSACTION
            )


def test_statuses_are_strings() -> None:
    assert M.RUNNING == "RUNNING"
    assert f"{T.PENDING}" == "PENDING"
