"""The cancel in the state tables and in the email (issue 12, defect 1): pure, no AWS."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chalicelib.notify import MissionReport, email_body
from chalicelib.states import (
    TRANSACTION_TRANSITIONS,
    IllegalTransition,
    MissionStatus,
    TransactionStatus,
    shown_status,
    transaction_sources,
)

M, T = MissionStatus, TransactionStatus


def test_cancel_settles_a_running_or_waiting_transaction_and_nothing_finished() -> None:
    assert set(transaction_sources(T.CANCELLED)) == {"PENDING", "RUNNING"}
    assert TRANSACTION_TRANSITIONS[T.CANCELLED] == frozenset()
    for done in (T.SUCCEEDED, T.FAILED):
        with pytest.raises(IllegalTransition):
            transaction_sources(T.CANCELLED, [done])


@pytest.mark.parametrize(
    ("status", "counted", "shown"),
    [
        (T.PENDING, False, T.CANCELLED),  # never claimed, or waiting for a retry
        (T.RUNNING, False, T.CANCELLED),  # its worker never came back
        (T.SUCCEEDED, False, T.CANCELLED),  # finished after the cancel: it did not count
        (T.FAILED, False, T.CANCELLED),
        (T.SUCCEEDED, True, T.SUCCEEDED),  # counted before the cancel: it stands
        (T.FAILED, True, T.FAILED),
        (T.CANCELLED, False, T.CANCELLED),
    ],
)
def test_cancel_shows_every_uncounted_transaction_cancelled(
    status: TransactionStatus, counted: bool, shown: TransactionStatus
) -> None:
    assert shown_status(status, counted, M.CANCELLED) is shown


@pytest.mark.parametrize("status", [M.RUNNING, M.SUCCEEDED, M.FAILED])
def test_cancel_changes_nothing_shown_in_other_missions(status: MissionStatus) -> None:
    for t in (T.PENDING, T.RUNNING, T.SUCCEEDED, T.FAILED):
        assert shown_status(t, False, status) is t


def test_cancel_email_says_who_cancelled_it_and_when() -> None:
    report = MissionReport(
        mission_id="m-1",
        name="batch",
        status="CANCELLED",
        total=10,
        succeeded=3,
        failed=1,
        cancelled=6,
        duration_seconds=12.0,
        instance_seconds=30.0,
        estimated_cost=0.01,
        instances=2,
        result_uri=None,
        error="cancelled by request",
        failures=[],
        submitted_by="arn:aws:iam::1:user/alice",
        cancelled_by="arn:aws:iam::1:user/bob",
        cancelled_at=datetime(2026, 12, 1, 8, 30, tzinfo=UTC),
    )
    body = email_body(report)
    assert body.startswith(
        "Mission 'batch' (m-1) was cancelled by arn:aws:iam::1:user/bob"
        " at 2026-12-01T08:30:00+00:00."
    )
    assert "10 in all, 3 succeeded, 1 failed, 6 cancelled" in body
    assert "failed:" not in body.replace("1 failed,", "")  # no "The mission failed: ..."


def test_the_progress_bar_counts_cancelled_transactions_as_done():
    from local.client import progress_line

    mission = {
        "status": "CANCELLED",
        "transactions": {"total": 4, "SUCCEEDED": 1, "FAILED": 1, "CANCELLED": 2, "PENDING": 0},
    }
    line = progress_line(mission, width=8)
    assert line.startswith("[########] 4/4  CANCELLED") and line.endswith("cancelled 2"), line
