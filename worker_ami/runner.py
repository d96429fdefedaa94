"""Run one app attempt: an argv list in a subprocess (never a shell), with a timeout.

The app runs in its own process group, and the whole group is killed once the app has exited,
however it exited: nothing it started outlives its attempt to compete with the next one. Its
stderr goes through a pipe, so a chatty app cannot fill the worker's disk.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

STDERR_TAIL_BYTES = 2000  # reported with the outcome (and in the email)
STDERR_LOG_BYTES = 4 * 1024 * 1024  # kept on disk from the start of stderr, besides the tail
# How long the stderr reader may drain the pipe after the group is killed: a process that left
# the group (setsid) may hold it open for ever, and must not hold up the attempt too.
_DRAIN_SECONDS = 5.0


@dataclass(frozen=True)
class AppResult:
    exit_code: int
    stderr_tail: str
    seconds: float
    timed_out: bool = False
    aborted: bool = False  # stopped by the agent (lease lost, Spot interruption): no verdict


def run_app(
    argv: list[str],
    timeout: float,
    cwd: Path,
    log_path: Path,
    keep_going: Callable[[], bool] | None = None,
    tick_seconds: float = 1.0,
    stderr_cap: int = STDERR_LOG_BYTES,
) -> AppResult:
    """Run `argv`; on timeout kill its whole process group and report exit code -9.

    `keep_going` is called about every `tick_seconds` while the app runs (the agent's heartbeat
    and interruption check); when it returns False the app is killed and the result `aborted`.
    `log_path` gets the first `stderr_cap` bytes of stderr and its last STDERR_TAIL_BYTES.
    """
    began = time.monotonic()
    try:
        process = subprocess.Popen(  # noqa: S603 - argv list, no shell, by design
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so the group can be killed
        )
    except OSError as e:
        log_path.write_bytes(b"")
        return AppResult(127, f"cannot start {argv[0]!r}: {e}", time.monotonic() - began)
    assert process.stderr is not None
    stderr = _StderrLog(process.stderr, log_path, stderr_cap)
    timed_out = aborted = False
    try:
        deadline = began + timeout
        while not _exited(process, min(tick_seconds, max(0.0, deadline - time.monotonic()))):
            timed_out = time.monotonic() >= deadline
            aborted = not timed_out and keep_going is not None and not keep_going()
            if timed_out or aborted:
                break
    finally:
        # The app has exited but is not reaped yet (or is being stopped): its pid, which is its
        # group's id, cannot have been reused, so this kills its own group and nobody else's.
        _kill_group(process.pid)
        exit_code = process.wait()
        stderr.close()
    tail = stderr.tail()
    if timed_out:
        tail = (tail + f"\nkilled after the transaction timeout of {timeout:g} s").strip()
    return AppResult(exit_code, tail, time.monotonic() - began, timed_out, aborted)


def _exited(process: subprocess.Popen[bytes], seconds: float) -> bool:
    """Wait up to `seconds` for the app to exit, without reaping it (waitid's WNOWAIT)."""
    until = time.monotonic() + seconds
    pause = 0.001
    while True:
        if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        left = until - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.05)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already empty
        os.killpg(pgid, signal.SIGKILL)


class _StderrLog:
    """Drains the app's stderr pipe: the head to disk up to a cap, the tail kept in memory and
    appended at the end, the middle counted and dropped. Draining never stops, so an app
    writing past the cap is not blocked on a full pipe."""

    def __init__(self, pipe: IO[bytes], path: Path, cap: int) -> None:
        self._fd = pipe.fileno()
        self._pipe = pipe
        self._path = path
        self._cap = cap
        self._head = 0  # bytes written to disk
        self._total = 0
        self._tail = b""  # the last STDERR_TAIL_BYTES of the stream
        self._lock = threading.Lock()
        self._log = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._thread = threading.Thread(target=self._drain, name="app-stderr", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self._fd, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                if self._log.closed:
                    return
                room = self._cap - self._head
                if room > 0:
                    self._log.write(chunk[:room])
                    self._head += min(room, len(chunk))
                self._total += len(chunk)
                self._tail = (self._tail + chunk)[-STDERR_TAIL_BYTES:]

    def close(self) -> None:
        """Finish the log once the app's group is gone (the pipe then reaches its end)."""
        self._thread.join(_DRAIN_SECONDS)
        with self._lock:
            beyond = self._total - self._head  # not in the head
            if beyond > 0:
                tail = self._tail[-beyond:]
                dropped = beyond - len(tail)
                if dropped:
                    self._log.write(f"\n[... {dropped} bytes of stderr dropped ...]\n".encode())
                self._log.write(tail)
            self._log.close()
        if not self._thread.is_alive():
            self._pipe.close()

    def tail(self) -> str:
        with self._lock:
            return self._tail.decode("utf-8", "replace").strip()
