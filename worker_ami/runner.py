"""Run one app attempt: an argv list in a subprocess (never a shell), with a timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

STDERR_TAIL_BYTES = 2000


@dataclass(frozen=True)
class AppResult:
    exit_code: int
    stderr_tail: str
    seconds: float
    timed_out: bool = False


def run_app(argv: list[str], timeout: float, cwd: Path, log_path: Path) -> AppResult:
    """Run `argv`; on timeout kill its whole process group and report exit code -9."""
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
        timed_out = False
        try:
            exit_code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)
            exit_code = process.wait()
    tail = _tail(log_path)
    if timed_out:
        tail = (tail + f"\nkilled after the transaction timeout of {timeout:g} s").strip()
    return AppResult(exit_code, tail, time.monotonic() - began, timed_out)


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - STDERR_TAIL_BYTES))
        return f.read().decode("utf-8", "replace").strip()
