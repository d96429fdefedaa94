"""run_app: real (tiny) subprocesses, argv lists, timeouts that kill the process group."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from worker_ami.runner import STDERR_LOG_BYTES, STDERR_TAIL_BYTES, AppResult, app_sandbox, run_app

PY = app_sandbox().python  # an interpreter the app users can run (see runner.app_sandbox)


def py(code: str) -> list[str]:
    return [PY, "-c", code]


def run(tmp_path: Path, argv: list[str], timeout: float = 20) -> AppResult:
    return run_app(argv, timeout, tmp_path, tmp_path / "stderr.log")


def test_success(tmp_path: Path) -> None:
    result = run(tmp_path, py("pass"))
    assert result.exit_code == 0
    assert result.stderr_tail == ""
    assert result.timed_out is False
    assert result.seconds >= 0


def test_exit_code_and_stderr_are_captured(tmp_path: Path) -> None:
    code = "import sys; print('to stdout'); sys.stderr.write('oops: bad input\\n'); sys.exit(3)"
    result = run(tmp_path, py(code))
    assert result.exit_code == 3
    assert result.stderr_tail == "oops: bad input"
    assert "to stdout" not in result.stderr_tail
    assert result.timed_out is False
    assert (tmp_path / "stderr.log").read_text() == "oops: bad input\n"


def test_uncaught_exception(tmp_path: Path) -> None:
    result = run(tmp_path, py("raise RuntimeError('kaboom')"))
    assert result.exit_code == 1
    assert result.stderr_tail.endswith("RuntimeError: kaboom")


def test_only_the_tail_of_stderr_is_kept(tmp_path: Path) -> None:
    code = "import sys; sys.stderr.write('x' * 10000 + 'THE END')"
    result = run(tmp_path, py(code))
    assert result.exit_code == 0
    assert len(result.stderr_tail) <= STDERR_TAIL_BYTES
    assert result.stderr_tail.endswith("THE END")


def test_undecodable_stderr_is_replaced(tmp_path: Path) -> None:
    result = run(tmp_path, py("import sys; sys.stderr.buffer.write(b'bad \\xff\\xfe bytes')"))
    assert result.stderr_tail == "bad \ufffd\ufffd bytes"


def test_argv_elements_are_not_split_or_interpreted(tmp_path: Path) -> None:
    code = "import pathlib, sys; pathlib.Path('args.txt').write_text(repr(sys.argv[1:]))"
    args = ["a b", "c;d", "$(echo no)", "`id`", "*", "&&", "'q'"]
    result = run(tmp_path, [*py(code), *args])
    assert result.exit_code == 0
    assert (tmp_path / "args.txt").read_text() == repr(args)


def test_runs_in_cwd_without_stdin(tmp_path: Path) -> None:
    code = "import os, sys; open('here.txt', 'w').write(os.getcwd() + '|' + sys.stdin.read())"
    assert run(tmp_path, py(code)).exit_code == 0
    cwd, stdin = (tmp_path / "here.txt").read_text().split("|")
    assert Path(cwd).resolve() == tmp_path.resolve()
    assert stdin == ""


def test_killed_by_a_signal(tmp_path: Path) -> None:
    result = run(tmp_path, py("import os, signal; os.kill(os.getpid(), signal.SIGTERM)"))
    assert result.exit_code == -signal.SIGTERM
    assert result.timed_out is False


def test_timeout_kills_and_reports(tmp_path: Path) -> None:
    code = "import sys, time; sys.stderr.write('started\\n'); sys.stderr.flush(); time.sleep(30)"
    began = time.monotonic()
    result = run(tmp_path, py(code), timeout=2)
    assert time.monotonic() - began < 10
    assert result.timed_out is True
    assert result.exit_code == -9
    assert result.exit_code < 0
    assert result.stderr_tail.startswith("started")
    assert result.stderr_tail.endswith("killed after the transaction timeout of 2 s")
    assert 2 <= result.seconds < 10


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # an orphan killed but not yet reaped by init is a zombie: dead all the same
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        "open('child.pid', 'w').write(str(child.pid))\n"
        "time.sleep(30)\n"
    )
    result = run(tmp_path, py(code), timeout=2.5)
    assert result.timed_out is True
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child)


def test_missing_program_is_127(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-program")
    result = run(tmp_path, [missing, "--flag"])
    assert result.exit_code == 127
    assert result.timed_out is False
    assert "cannot start" in result.stderr_tail
    assert missing in result.stderr_tail


def test_program_not_on_path_is_127(tmp_path: Path) -> None:
    assert run(tmp_path, ["lighthpc-surely-not-a-real-program-xyz"]).exit_code == 127


def test_non_executable_file_is_127(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    result = run(tmp_path, [str(script)])
    assert result.exit_code == 127
    assert "cannot start" in result.stderr_tail


def _wait_gone(pid: int, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _gone(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("exit_code", [0, 3])
def test_no_child_outlives_an_app_that_exits(tmp_path: Path, exit_code: int) -> None:
    """A child left behind would keep using the slot's CPU and memory after its attempt."""
    code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'],\n"
        "                         stderr=subprocess.DEVNULL)\n"
        "open('child.pid', 'w').write(str(child.pid))\n"
        f"sys.exit({exit_code})\n"
    )
    began = time.monotonic()
    result = run(tmp_path, py(code))
    assert result.exit_code == exit_code and result.timed_out is False
    assert time.monotonic() - began < 10
    assert _wait_gone(int((tmp_path / "child.pid").read_text()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_child_holding_stderr_open_neither_survives_nor_hangs_the_attempt(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        "open('child.pid', 'w').write(str(child.pid))\n"
        "sys.stderr.write('parent done')\n"
    )
    began = time.monotonic()
    result = run(tmp_path, py(code))
    assert time.monotonic() - began < 10
    assert (result.exit_code, result.stderr_tail) == (0, "parent done")
    assert _wait_gone(int((tmp_path / "child.pid").read_text()))


def test_stderr_on_disk_is_bounded(tmp_path: Path) -> None:
    """A chatty app must not fill the worker's disk: the log keeps a head and the tail."""
    code = (
        "import sys\n"
        "sys.stderr.buffer.write(b'HEAD' + b'x' * (50 * 1024 * 1024))\n"
        "sys.stderr.buffer.write(b'THE END')\n"
    )
    result = run(tmp_path, py(code))
    assert result.exit_code == 0
    log = tmp_path / "stderr.log"
    assert log.stat().st_size <= STDERR_LOG_BYTES + STDERR_TAIL_BYTES + 200
    text = log.read_bytes()
    assert text.startswith(b"HEAD") and text.endswith(b"THE END")
    assert b"bytes of stderr dropped" in text
    assert len(result.stderr_tail) <= STDERR_TAIL_BYTES
    assert result.stderr_tail.endswith("THE END")


def test_a_small_stderr_is_logged_whole(tmp_path: Path) -> None:
    code = "import sys; sys.stderr.write('a' * 5000 + 'THE END')"
    result = run(tmp_path, py(code))
    assert (tmp_path / "stderr.log").read_text() == "a" * 5000 + "THE END"
    assert result.stderr_tail == ("a" * 5000 + "THE END")[-STDERR_TAIL_BYTES:]


def test_the_stderr_cap_is_a_parameter(tmp_path: Path) -> None:
    code = "import sys; sys.stderr.write('0123456789' * 1000)"
    result = run_app(py(code), 20, tmp_path, tmp_path / "stderr.log", stderr_cap=100)
    head, marker, tail = (tmp_path / "stderr.log").read_text().split("\n")
    assert head == "0123456789" * 10
    assert marker == f"[... {10000 - 100 - STDERR_TAIL_BYTES} bytes of stderr dropped ...]"
    assert tail == ("0123456789" * 1000)[-STDERR_TAIL_BYTES:] == result.stderr_tail


def test_without_pidfds_the_exit_is_still_seen_and_stderr_drained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux before 5.3 has no pidfd_open: the runner then checks the exit between polls."""

    def no_pidfds(pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfds)
    code = (
        "import sys, time; sys.stderr.write('x' * 200000 + 'THE END'); time.sleep(0.3); sys.exit(4)"
    )
    result = run(tmp_path, py(code))
    assert (result.exit_code, result.timed_out) == (4, False)
    assert result.stderr_tail.endswith("THE END")
    assert (tmp_path / "stderr.log").stat().st_size == 200000 + len("THE END")
    slow = run_app(py("import time; time.sleep(30)"), 0.5, tmp_path, tmp_path / "slow.log")
    assert (slow.exit_code, slow.timed_out) == (-9, True)
