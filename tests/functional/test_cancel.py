"""Cancel (issue 12, defect 1), in-process on moto: a cancel stops the apps, settles every
transaction, counts nothing that arrives after it, and sends one email whose figures are the
API's."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chalicelib.context import get_context, reset_process_state
from chalicelib.domain import Usage
from chalicelib.layout import part_key
from chalicelib.states import TransactionStatus
from chalicelib.sweeper import sweep
from local.inprocess import InProcessCluster
from tests.functional.test_mission import kmer_config
from tests.functional.test_reliability import claim, mission, rows, start

# Writes its pid, then sleeps: an app that would run long after its mission was cancelled.
PID_THEN_SLEEP = (
    "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid()));"
    " time.sleep(float(sys.argv[2])); open(sys.argv[3], 'w').write('too late')"
)
T = TransactionStatus


def later(seconds: float):
    """The context, its clock `seconds` ahead (the sweeper as it runs that much later)."""
    return dataclasses.replace(get_context(), clock=lambda: time.time() + seconds)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def parts_of(cluster: InProcessCluster, mission_id: str) -> list[str]:
    bucket = cluster.stack.outputs["ResultBucketName"]
    listed = cluster.s3.list_objects_v2(Bucket=bucket, Prefix=f"parts/{mission_id}/")
    return [o["Key"] for o in listed.get("Contents", [])]


def stored_statuses(mission_id: str) -> list[T]:
    return [t.status for t in get_context().store.transactions.of(mission_id)]


@pytest.fixture
def pid_folder() -> Iterator[Path]:
    """Where the apps write their pids: one any user may write to (apps run as users of their
    own when the agent is root, and reach nothing of the test's)."""
    folder = Path(tempfile.mkdtemp(prefix="lighthpc-cancel-", dir="/tmp"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_cancel_stops_the_running_apps_and_settles_their_transactions(
    cluster: InProcessCluster, pid_folder: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("LEASE_SECONDS", "6")  # a heartbeat every 2 s
    reset_process_state()
    pids = pid_folder
    argv = ["{python}", "-c", PID_THEN_SLEEP, f"{pids}/{{index}}.pid", "40", "{output}"]
    config = kmer_config(
        "stopped", "stop.fa", count=2, app={"argv": argv}, instances={"max_instances": 1}
    )
    config["instances"]["slots"] = 2
    mission_id = start(cluster, config)
    workers = threading.Thread(target=cluster.run_workers, args=(mission_id,))
    workers.start()
    try:
        deadline = time.monotonic() + 30
        while len(list(pids.glob("*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        started = [int(p.read_text() or 0) for p in sorted(pids.glob("*.pid"))]
        assert len(started) == 2, "the apps never started"
        assert cluster.api.http.delete(f"/missions/{mission_id}").status_code == 200
        cancelled_at = time.monotonic()
        workers.join(timeout=60)
        stopped_after = time.monotonic() - cancelled_at
    finally:
        workers.join()
    assert stopped_after < 15, f"the apps ran on {stopped_after:.1f} s after the cancel"
    assert not [pid for pid in started if alive(pid)]
    assert parts_of(cluster, mission_id) == []  # nothing uploaded for a cancelled mission
    # Settled by the workers that held them: nothing stays RUNNING, in the store or the API.
    assert stored_statuses(mission_id) == [T.CANCELLED, T.CANCELLED]
    assert [t["status"] for t in rows(cluster, mission_id)] == ["CANCELLED", "CANCELLED"]
    described = mission(cluster, mission_id)["transactions"]
    assert (described["CANCELLED"], described["RUNNING"], described["PENDING"]) == (2, 0, 0)


def _one_number(pattern: str, body: str) -> str:
    found = re.search(pattern, body)
    assert found, f"{pattern!r} not in the email:\n{body}"
    return found.group(1)


def test_cancel_email_says_cancelled_and_shows_the_apis_figures(cluster: InProcessCluster):
    mission_id = start(cluster, kmer_config("halfway", "half.fa", count=6))
    store, bucket = get_context().store, cluster.stack.outputs["ResultBucketName"]
    now = time.time()
    done = [claim(mission_id, f"i-a/{slot}", now, 300) for slot in (0, 1)]
    lost = claim(mission_id, "i-b/0", now, 300)  # its worker never comes back
    for t in done:
        cluster.s3.put_object(Bucket=bucket, Key=part_key(mission_id, t.index, t.claim), Body=b"x")
    cluster.deliver_result_events()
    assert mission(cluster, mission_id)["transactions"]["SUCCEEDED"] == 2
    time.sleep(0.2)  # the instances have run a moment: the cancel accounts for it

    assert cluster.api.http.delete(f"/missions/{mission_id}").status_code == 200
    # After the cancel: the lost worker's part lands, a worker reports its usage late.
    late = part_key(mission_id, lost.index, lost.claim)
    cluster.s3.put_object(Bucket=bucket, Key=late, Body=b"late")
    cluster.deliver_result_events()
    store.missions.add_instance_usage(mission_id, "i-late", Usage(1000.0, 5.0))
    for _ in range(3):  # the sweeper comes by, past the cancel's quiet period
        sweep(later(120))
    cluster.deliver_result_events()

    emails = cluster.emails()
    assert len(emails) == 1, [e.subject for e in emails]
    body = emails[0].body
    api = mission(cluster, mission_id)
    assert api["status"] == "CANCELLED"
    assert api["transactions"] == {
        "PENDING": 0,
        "RUNNING": 0,
        "SUCCEEDED": 2,
        "FAILED": 0,
        "CANCELLED": 4,
        "total": 6,
    }
    assert [t["status"] for t in rows(cluster, mission_id)] == ["SUCCEEDED"] * 2 + ["CANCELLED"] * 4
    assert T.RUNNING not in stored_statuses(mission_id)  # the lost lease was settled too
    assert "The mission failed" not in body
    assert "was cancelled by local at" in body
    assert "6 in all, 2 succeeded, 0 failed, 4 cancelled" in body
    assert api["instance_seconds"] > 0  # the instances it stopped, accounted
    # The same figures: the email shows them to 0.1 s and $0.0001, the API to 0.001 s and
    # $0.000001 (so within half the email's step plus half the API's, rounded twice).
    seconds = _one_number(r"Instance-seconds: ([\d.]+)", body)
    assert abs(float(seconds) - api["instance_seconds"]) <= 0.05 + 0.0005
    cost = _one_number(r"Estimated cost:   \$([\d.]+)", body)
    assert abs(float(cost) - api["estimated_cost_usd"]) <= 0.00005 + 0.0000005
    assert api["instance_seconds"] < 1000  # the late report was not added
    # Once: later sweeps and a second cancel send nothing.
    sweep(later(3600))
    assert cluster.api.http.delete(f"/missions/{mission_id}").status_code == 409
    assert cluster.emails() == []
    assert mission(cluster, mission_id) == api


def test_cancel_email_goes_out_by_its_deadline_whatever_workers_do(cluster: InProcessCluster):
    """A worker that keeps a lease in the cancelled mission (it claimed a queued retry) does not
    hold the email back past its deadline; its lease is settled all the same."""
    mission_id = start(cluster, kmer_config("stubborn", "stubborn.fa", count=2))
    store, now = get_context().store, time.time()
    first = claim(mission_id, "i-a/0", now, 300)
    store.transactions.requeue(first, "i-a/0", 1, "failed once", now)
    assert cluster.api.http.delete(f"/missions/{mission_id}").status_code == 200
    assert cluster.emails() == []  # the figures are not final yet: the sweeper sends it
    retried = claim(mission_id, "i-a/1", time.time(), 300)  # a retry claimed after the cancel
    assert retried is not None and retried.index == first.index
    report = sweep(later(3600))
    assert report.mailed == [mission_id]
    assert T.RUNNING not in stored_statuses(mission_id)
    [email] = cluster.emails()
    assert "2 in all, 0 succeeded, 0 failed, 2 cancelled" in email.body
    assert [t["status"] for t in rows(cluster, mission_id)] == ["CANCELLED", "CANCELLED"]


def test_cancel_of_a_mission_awaiting_its_input_mails_at_once(cluster: InProcessCluster):
    response = cluster.submit(kmer_config("early", "early.fa"))
    mission_id = json.loads(response.body)["mission_id"]
    assert cluster.api.http.delete(f"/missions/{mission_id}").status_code == 200
    [email] = cluster.emails()
    assert email.subject == "lighthpc: early CANCELLED"
    assert "was cancelled by local at" in email.body
    assert "The mission failed" not in email.body
    assert sweep(later(3600)).mailed == []
