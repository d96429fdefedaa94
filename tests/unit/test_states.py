"""states: what the state machine guarantees, and the sources every status write derives from it.

The store builds each status write's condition from `mission_sources` / `transaction_sources`
(tests/functional/test_store.py shows the writes refusing); here, the properties of the tables
that the rest of the system relies on.
"""

from __future__ import annotations

import pytest

from chalicelib.states import (
    MISSION_TRANSITIONS,
    TERMINAL_MISSION,
    TRANSACTION_TRANSITIONS,
    IllegalTransition,
    MissionStatus,
    TransactionStatus,
    after_failed_attempt,
    mission_outcome,
    mission_sources,
    transaction_sources,
)

M = MissionStatus
T = TransactionStatus


def _reachable(table: dict, start) -> set:
    reached = {start}
    while True:
        more = reached | {t for s in reached for t in table[s]}
        if more == reached:
            return reached
        reached = more


def test_every_mission_status_is_reachable_and_every_live_one_can_end() -> None:
    assert _reachable(MISSION_TRANSITIONS, M.AWAITING_INPUT) == set(M)
    for status in set(M) - TERMINAL_MISSION:
        assert _reachable(MISSION_TRANSITIONS, status) & TERMINAL_MISSION, status


@pytest.mark.parametrize("status", sorted(TERMINAL_MISSION))
def test_a_finished_mission_cannot_be_moved(status: MissionStatus) -> None:
    for target in M:
        with pytest.raises(IllegalTransition, match=f"from {status.value} to {target.value}"):
            mission_sources(target, [status])


def test_any_live_mission_can_be_cancelled_or_failed() -> None:
    live = set(M) - TERMINAL_MISSION
    assert set(mission_sources(M.CANCELLED)) == live
    assert set(mission_sources(M.FAILED)) == live


def test_a_mission_runs_only_after_planning_and_succeeds_only_from_running_or_reducing() -> None:
    assert mission_sources(M.RUNNING) == ["PLANNING"]
    assert mission_sources(M.SUCCEEDED) == ["RUNNING", "REDUCING"]
    assert mission_sources(M.REDUCING) == ["RUNNING"]
    with pytest.raises(IllegalTransition):
        mission_sources(M.RUNNING, [M.AWAITING_INPUT])


def test_narrowing_keeps_only_what_the_write_path_names() -> None:
    assert mission_sources(M.FAILED, [M.RUNNING]) == ["RUNNING"]
    assert mission_sources(M.PLANNING, [M.AWAITING_INPUT, M.PLANNING]) == [
        "AWAITING_INPUT",
        "PLANNING",
    ]


def test_a_transaction_is_claimed_only_when_pending_and_finished_only_when_running() -> None:
    assert transaction_sources(T.RUNNING) == ["PENDING"]
    for target in (T.SUCCEEDED, T.FAILED, T.PENDING):
        assert transaction_sources(target) == ["RUNNING"]
    for done in (T.SUCCEEDED, T.FAILED):
        assert TRANSACTION_TRANSITIONS[done] == frozenset()
        with pytest.raises(IllegalTransition):
            transaction_sources(T.PENDING, [done])  # a finished transaction is never requeued


def test_or_already_lets_the_second_writer_of_one_outcome_add_its_details() -> None:
    assert transaction_sources(T.SUCCEEDED, [T.RUNNING], or_already=True) == [
        "RUNNING",
        "SUCCEEDED",
    ]
    # ... but never moves one outcome into another.
    assert "FAILED" not in transaction_sources(T.SUCCEEDED, or_already=True)


@pytest.mark.parametrize(
    ("attempts", "max_attempts", "expected"),
    [(1, 3, T.PENDING), (2, 3, T.PENDING), (3, 3, T.FAILED), (4, 3, T.FAILED), (1, 1, T.FAILED)],
)
def test_after_failed_attempt(
    attempts: int, max_attempts: int, expected: TransactionStatus
) -> None:
    assert after_failed_attempt(attempts, max_attempts) is expected


def test_exit_rules_first_match_decides_and_attempts_still_run_out() -> None:
    rules = [("3", "fail"), ("1*", "retry"), ("*", "fail")]
    assert after_failed_attempt(1, 5, 3, rules) is T.FAILED
    assert after_failed_attempt(1, 5, 12, rules) is T.PENDING
    assert after_failed_attempt(1, 5, 7, rules) is T.FAILED
    assert after_failed_attempt(5, 5, 12, rules) is T.FAILED  # out of attempts beats "retry"
    assert after_failed_attempt(1, 5, None, rules) is T.PENDING  # no exit code: no rule applies
    assert after_failed_attempt(1, 5, -9, [("-9", "fail")]) is T.FAILED


@pytest.mark.parametrize(
    ("succeeded", "failed", "total", "expected"),
    [
        (0, 0, 3, None),
        (2, 0, 3, None),
        (1, 1, 3, None),
        (3, 0, 3, M.SUCCEEDED),
        (2, 1, 3, M.FAILED),
        (0, 3, 3, M.FAILED),
        (0, 0, 0, M.SUCCEEDED),
    ],
)
def test_mission_outcome(
    succeeded: int, failed: int, total: int, expected: MissionStatus | None
) -> None:
    assert mission_outcome(succeeded, failed, total) == expected
