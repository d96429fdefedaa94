"""worker_ami.agent.verdict_of: what one attempt's result means for its transaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib.config import parse_mission_config
from chalicelib.domain import Mission
from chalicelib.settings import Settings
from chalicelib.states import MissionStatus
from worker_ami.agent import Verdict, verdict_of
from worker_ami.runner import AppResult


def mission(**overrides: Any) -> Mission:
    body = {
        "name": "verdicts",
        "input": "in.txt",
        "split": {"mode": "count", "count": 4, "interval": {"start": 0, "end": 100}},
        "app": {"argv": ["{python}", "-c", "pass", "{output}"]},
        **overrides,
    }
    config = parse_mission_config(json.dumps(body), Settings.from_env({}))
    return Mission(
        mission_id="m-verdict",
        name=config.name,
        status=MissionStatus.RUNNING,
        config=config,
        input_key=config.input,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        total=4,
    )


def result(exit_code: int, *, aborted: bool = False, timed_out: bool = False) -> AppResult:
    return AppResult(exit_code, "" if exit_code == 0 else "boom", 1.0, timed_out, aborted)


THREE = mission(max_attempts=3)


@pytest.mark.parametrize("exit_code", [0, 1, -9, 137])
@pytest.mark.parametrize("interrupted", [False, True])
@pytest.mark.parametrize("attempt", [1, 3])
def test_an_aborted_attempt_is_handed_back(exit_code: int, interrupted: bool, attempt: int):
    """Stopped by the agent (lease lost, interruption): not the app's fault, whatever it said."""
    verdict = verdict_of(result(exit_code, aborted=True), attempt, THREE, interrupted)
    assert verdict is Verdict.HAND_BACK


@pytest.mark.parametrize("exit_code", [1, 2, -9, -15, 143])
@pytest.mark.parametrize("attempt", [1, 3])
def test_an_interrupted_failure_is_handed_back(exit_code: int, attempt: int):
    assert verdict_of(result(exit_code), attempt, THREE, interrupted=True) is Verdict.HAND_BACK


def test_a_failure_handed_back_even_when_out_of_attempts_and_ruled_fail():
    ruled = mission(max_attempts=1, exit_rules=[{"on_exit_code": "*", "action": "fail"}])
    assert verdict_of(result(1), 1, ruled, interrupted=True) is Verdict.HAND_BACK


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_an_interrupted_attempt_that_finished_succeeds(attempt: int):
    """The notice came, but the app had already exited 0: its output is good."""
    assert verdict_of(result(0), attempt, THREE, interrupted=True) is Verdict.SUCCEEDED


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_exit_zero_succeeds(attempt: int):
    assert verdict_of(result(0), attempt, THREE, interrupted=False) is Verdict.SUCCEEDED


@pytest.mark.parametrize("attempt", [1, 2])
def test_a_failure_with_attempts_left_is_retried(attempt: int):
    assert verdict_of(result(1), attempt, THREE, interrupted=False) is Verdict.RETRY


def test_a_timed_out_attempt_with_attempts_left_is_retried():
    timed_out = result(-9, timed_out=True)
    assert verdict_of(timed_out, 1, THREE, interrupted=False) is Verdict.RETRY
    assert verdict_of(timed_out, 3, THREE, interrupted=False) is Verdict.FAILED


@pytest.mark.parametrize(("max_attempts", "attempt"), [(1, 1), (3, 3), (3, 4), (10, 10)])
def test_a_failure_out_of_attempts_fails(max_attempts: int, attempt: int):
    m = mission(max_attempts=max_attempts)
    assert verdict_of(result(1), attempt, m, interrupted=False) is Verdict.FAILED


def test_the_default_is_three_attempts():
    default = mission()
    assert default.config.max_attempts == 3
    verdicts = [verdict_of(result(1), a, default, interrupted=False) for a in (1, 2, 3)]
    assert verdicts == [Verdict.RETRY, Verdict.RETRY, Verdict.FAILED]


def test_an_exit_rule_fail_fails_at_the_first_attempt():
    ruled = mission(
        max_attempts=5,
        exit_rules=[
            {"on_exit_code": "3", "action": "fail"},
            {"on_exit_code": "*", "action": "retry"},
        ],
    )
    assert ruled.exit_rules == [("3", "fail"), ("*", "retry")]
    assert verdict_of(result(3), 1, ruled, interrupted=False) is Verdict.FAILED
    assert verdict_of(result(4), 1, ruled, interrupted=False) is Verdict.RETRY
    assert verdict_of(result(0), 1, ruled, interrupted=False) is Verdict.SUCCEEDED


def test_exit_rules_first_match_decides():
    ruled = mission(
        max_attempts=5,
        exit_rules=[
            {"on_exit_code": "1*", "action": "retry"},
            {"on_exit_code": "*", "action": "fail"},
        ],
    )
    assert verdict_of(result(12), 1, ruled, interrupted=False) is Verdict.RETRY
    assert verdict_of(result(2), 1, ruled, interrupted=False) is Verdict.FAILED
    assert verdict_of(result(-9), 1, ruled, interrupted=False) is Verdict.FAILED


def test_a_retry_rule_does_not_outlast_the_attempts():
    ruled = mission(max_attempts=2, exit_rules=[{"on_exit_code": "*", "action": "retry"}])
    assert verdict_of(result(1), 1, ruled, interrupted=False) is Verdict.RETRY
    assert verdict_of(result(1), 2, ruled, interrupted=False) is Verdict.FAILED
