"""The worker agent and a cancel (issue 12, defect 1), against the in-memory fakes of
test_agent_reliability: the agent notices its mission was cancelled while it works, stops the
app, settles its transaction CANCELLED and uploads nothing."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

from chalicelib.domain import Transaction
from chalicelib.states import MissionStatus, TransactionStatus
from tests.unit.test_agent_reliability import World, mission, world

T = TransactionStatus
SLEEP = "import time; time.sleep(30)"


def with_cancel(w: World) -> World:
    """The store's `transactions.cancel`, with its conditions: RUNNING in the same claim (and
    lease owner, when one is named) -> CANCELLED."""
    fake = w.transactions

    def cancel(txn: Transaction, now: float, reason: str, owner: str | None = None) -> bool:
        w.faults.enter("cancel")
        with fake.lock:
            held = fake.items[txn.index]
            if held.status is not T.RUNNING or held.claim != txn.claim:
                return False
            if owner is not None and held.lease_owner != owner:
                return False
            fake.items[txn.index] = dataclasses.replace(
                held, status=T.CANCELLED, lease_expires_at=None, error=reason
            )
            return True

    fake.cancel = cancel  # type: ignore[attr-defined]
    return w


def cancel_mission(w: World) -> None:
    w.store.missions.mission = dataclasses.replace(
        w.store.missions.mission, status=MissionStatus.CANCELLED
    )


def test_cancel_noticed_while_the_app_runs_stops_it(tmp_path: Path) -> None:
    w = with_cancel(world(tmp_path, mission(count=1, code=SLEEP), lease=3))
    threading.Timer(0.5, cancel_mission, args=(w,)).start()
    began = time.monotonic()
    report = w.agent(real_time=True).run()
    assert time.monotonic() - began < 8  # stopped within a heartbeat period, not waited for
    assert w.status() == [(T.CANCELLED, 1)]
    assert w.part(0) is None
    assert (report.succeeded, report.failed_attempts, report.handed_back) == (0, 0, 0)
    assert w.faults.calls["requeue"] == w.faults.calls["hand_back"] == 0
    assert w.ec2.terminated == ["i-agent"]


def test_cancel_noticed_during_the_download_runs_no_app(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    code = f"import pathlib; pathlib.Path({str(ran)!r}).touch()"
    w = with_cancel(world(tmp_path, mission(count=2, code=code), lease=3))

    def cancelled_meanwhile() -> None:
        cancel_mission(w)
        time.sleep(1.5)  # the agent looks at its mission at least once

    w.s3.while_downloading = cancelled_meanwhile
    report = w.agent(real_time=True, slots=1).run()
    assert not ran.exists()
    assert w.part(0) is None and w.part(1) is None
    assert w.status() == [(T.CANCELLED, 1)]  # and it claimed nothing more
    assert report.succeeded == 0
