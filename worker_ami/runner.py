"""Run one app attempt: an argv list in a subprocess (never a shell), with a timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STDERR_TAIL_BYTES = 2000


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
) -> AppResult:
    """Run `argv`; on timeout kill its whole process group and report exit code -9.

    `keep_going` is called about every `tick_seconds` while the app runs (the agent's heartbeat
    and interruption check); when it returns False the app is killed and the result `aborted`.
    """
    began = time.monotonic()
    with open(log_path, "wb") as stderr:
        try:
            process = subprocess.Popen(  # noqa: S603 - argv list, no shell, by design
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # its own process group, so a timeout kills children too
            )
        except OSError as e:
            return AppResult(127, f"cannot start {argv[0]!r}: {e}", time.monotonic() - began)
        timed_out = aborted = False
        deadline = began + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                exit_code = process.wait(timeout=max(0.0, min(remaining, tick_seconds)))
                break
            except subprocess.TimeoutExpired:
                timed_out = time.monotonic() >= deadline
                aborted = not timed_out and keep_going is not None and not keep_going()
                if timed_out or aborted:
                    os.killpg(process.pid, signal.SIGKILL)
                    exit_code = process.wait()
                    break
    tail = _tail(log_path)
    if timed_out:
        tail = (tail + f"\nkilled after the transaction timeout of {timeout:g} s").strip()
    return AppResult(exit_code, tail, time.monotonic() - began, timed_out, aborted)


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - STDERR_TAIL_BYTES))
        return f.read().decode("utf-8", "replace").strip()
