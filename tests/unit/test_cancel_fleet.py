"""The local fleet (issue 12, defect 1): terminating an instance ends everything it runs, the
apps included, although each app runs in a session of its own."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from local.fleet import LocalFleet, LocalWorker

# An agent as far as processes go: it starts an app the way worker_ami.runner does (a session
# of its own), and that app starts a child of its own; then it waits.
AGENT = """
import subprocess, sys, time
app = (
    "import subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    "open(sys.argv[1], 'w').write(str(child.pid)); time.sleep(60)"
)
process = subprocess.Popen(
    [sys.executable, "-c", app, sys.argv[2]], start_new_session=True
)
open(sys.argv[1], "w").write(str(process.pid))
time.sleep(60)
"""


class _NoMetadata:
    def stop(self) -> None:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead, only not reaped yet (its parent was killed first)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _wait_for(path: Path) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def test_cancel_terminating_an_instance_kills_its_apps_with_its_agent(tmp_path: Path) -> None:
    app_pid, child_pid = tmp_path / "app.pid", tmp_path / "child.pid"
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(app_pid), str(child_pid)], start_new_session=True
    )
    pids: list[int] = []
    try:
        pids = [_wait_for(app_pid), _wait_for(child_pid)]
        fleet = LocalFleet(None, "local", tmp_path, max_workers=1)
        worker = LocalWorker("i-test", {}, _NoMetadata(), agent, tmp_path / "log")  # type: ignore[arg-type]
        fleet.running[worker.instance_id] = worker
        fleet._end(worker, kill=True)  # what the fleet does to a terminated instance
        assert agent.poll() is not None
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in pids if _alive(pid)] == [], "the app outlived its instance"
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            agent.kill()
        agent.wait()
