"""Run one app attempt: an argv list in a subprocess (never a shell), with a timeout, as a user
that can reach nothing of the worker's.

Who runs the app is decided once per agent process (`app_sandbox`):

* The agent runs as root (on the worker AMI, and locally as root): every app runs as an
  unprivileged user of its own, one uid of APP_UIDS per running app, with no supplementary
  groups. That uid has no credentials anywhere: on the AMI a firewall rule rejects its packets to
  the instance metadata service, where the instance role's credentials are (the local metadata
  endpoint refuses its connections the same way, see local/imds.py); the input it reads is
  root's and read-only; its working directory (the attempt's scratch) is the only place it owns.
  After it exits, every process of that uid is killed, including a daemon that left the process
  group with setsid: one uid per running app makes "every process of this uid" exactly the app's.
  Root never runs an app as itself: if it cannot switch users, the attempt fails.
* Otherwise (a developer's laptop) the app runs as the agent's own user: its environment is still
  scrubbed and its process group still killed, but it can read whatever the agent can read, and
  a process that left its group can outlive it.

The app's environment is an allow list (`AppSandbox.environment`): no AWS_* variable, no metadata
URL, no credentials of any kind. Its stderr goes through a pipe, so a chatty app cannot fill the
worker's disk.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO

from chalicelib.observability import logger

STDERR_TAIL_BYTES = 2000  # reported with the outcome (and in the email)
STDERR_LOG_BYTES = 4 * 1024 * 1024  # kept on disk from the start of stderr, besides the tail
# How long stderr may still be drained after the app's group is killed: a process that left
# the group (setsid) may hold it open for ever, and must not hold up the attempt too.
_DRAIN_SECONDS = 5.0

# The uids apps run as: 256, one per running app (a mission's slots are at most 256). A range
# that systemd leaves unused (60578-61183, between systemd-homed's and DynamicUser's). The worker
# AMI creates them as lighthpc-app-0..255 with a group each of the same number, and its firewall
# matches this very range (worker_ami/packer/imds-guard.nft); locally they need no name.
APP_UID_BASE = 60600
APP_UID_COUNT = 256
APP_UIDS = range(APP_UID_BASE, APP_UID_BASE + APP_UID_COUNT)
# The directory that holds the worker_ami package: on PYTHONPATH for the apps, so the built-in
# apps (`{python} -m worker_ami.apps...`) import with any interpreter (/opt/lighthpc/app on the
# AMI).
CODE_ROOT = str(Path(__file__).resolve().parents[1])
# Passed through from the agent's environment; everything else is dropped.
_PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# What the built-in apps import: an interpreter that can, can run them.
_PROBE = "import argparse, hashlib, random, re"


@dataclass(frozen=True)
class AppResult:
    exit_code: int
    stderr_tail: str
    seconds: float
    timed_out: bool = False
    aborted: bool = False  # stopped by the agent (lease lost, Spot interruption): no verdict
    # Not run because this stage's policy refuses the program: it would be refused anywhere,
    # every time, so the transaction fails at once (no retry).
    refused: bool = False


@dataclass(frozen=True)
class AppUser:
    uid: int
    gid: int


class AppUsers:
    """The app users of this machine, one per running app, shared by every agent process on it
    (the local fleet runs several): a uid is held by an exclusive flock on its own lock file, which
    the kernel releases when the holder closes it or dies."""

    def __init__(
        self, uids: range = APP_UIDS, lock_dir: Path | None = None, poll_seconds: float = 0.1
    ) -> None:
        self.uids = uids
        self._lock_dir = lock_dir or Path(tempfile.gettempdir()) / "lighthpc-app-users"
        self._poll_seconds = poll_seconds
        self._quarantined: list[int] = []  # lock fds kept for good: a process of theirs survived

    @contextlib.contextmanager
    def lease(self, keep_going: Callable[[], bool] | None = None) -> Iterator[_Lease | None]:
        """A free app user for one attempt, waiting while all are busy (None if `keep_going`
        says to stop first)."""
        held = self._acquire(keep_going)
        if held is None:
            yield None
            return
        try:
            yield held
        finally:
            if held.quarantined:
                self._quarantined.append(held.fd)
                logger.error(
                    "an app user is kept out of use: its processes survived",
                    extra={
                        "uid": held.user.uid,
                    },
                )
            else:
                os.close(held.fd)

    def _acquire(self, keep_going: Callable[[], bool] | None) -> _Lease | None:
        directory = self._directory()
        while True:
            for uid in self.uids:
                path = directory / f"{uid}.lock"
                flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(path, flags, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                return _Lease(AppUser(uid, uid), fd)
            if keep_going is not None and not keep_going():
                return None
            time.sleep(self._poll_seconds)

    def _directory(self) -> Path:
        """The lock directory: ours alone, or someone could hold (or free) our uids."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(self._lock_dir, 0o700)
        s = os.lstat(self._lock_dir)
        if not stat.S_ISDIR(s.st_mode) or s.st_uid != os.geteuid() or s.st_mode & 0o077:
            raise PermissionError(f"{self._lock_dir} is not a private directory of this user")
        return self._lock_dir


@dataclass
class _Lease:
    user: AppUser
    fd: int
    quarantined: bool = False


@dataclass(frozen=True)
class AppSandbox:
    """How this machine runs apps: as whom, with which interpreter, in which environment."""

    users: AppUsers | None  # None: as the agent's own user (the agent is not root)
    python: str  # what `{python}` is for the apps
    pythonpath: tuple[str, ...] = (CODE_ROOT,)
    # Set when root cannot run apps as an app user: every attempt then fails with this reason.
    unavailable: str | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ), repr=False)

    @property
    def isolated(self) -> bool:
        return self.users is not None

    def environment(self, scratch: Path) -> dict[str, str]:
        """The app's whole environment: a few harmless variables of the agent's, and its own
        scratch as HOME and TMPDIR. No AWS_* variable, no metadata URL, no credentials."""
        env = {k: self.environ[k] for k in _PASSED_THROUGH if self.environ.get(k)}
        env.setdefault("PATH", _DEFAULT_PATH)
        env.setdefault("LANG", "C.UTF-8")
        return env | {
            "HOME": str(scratch),
            "TMPDIR": str(scratch),
            "PYTHONPATH": os.pathsep.join(self.pythonpath),
            "PYTHONDONTWRITEBYTECODE": "1",
        }


_SANDBOX_LOCK = threading.Lock()


def app_sandbox(python: str = sys.executable) -> AppSandbox:
    """The sandbox of this process, decided once (whichever slot asks first): see the module's
    docstring."""
    with _SANDBOX_LOCK:
        return _decide_sandbox(python)


@lru_cache(maxsize=4)
def _decide_sandbox(python: str) -> AppSandbox:
    if os.geteuid() != 0:
        logger.info("apps run as the agent's own user (it is not root): environment scrubbed only")
        return AppSandbox(users=None, python=python)
    users = AppUsers()
    with users.lease() as held:
        assert held is not None
        try:
            chosen = _interpreter_for(held.user, python)
            if chosen is None:
                reason = f"no Python interpreter that the app users may run (tried {python})"
                logger.error("apps cannot run here", extra={"reason": reason})
                return AppSandbox(users=users, python=python, unavailable=reason)
            pythonpath: tuple[str, ...] = (_code_root_for(held.user, chosen),)
        except PermissionError as e:
            reason = f"cannot run apps as an unprivileged user ({e}); root runs no app as itself"
            logger.error("apps cannot run here", extra={"reason": reason})
            return AppSandbox(users=users, python=python, unavailable=reason)
        if chosen != python:
            # Locally the agent's interpreter may live where other users cannot go (pyenv under
            # /root): the apps get a system one of the same version, with the agent's packages
            # where the app users can reach them.
            purelib = sysconfig.get_paths()["purelib"]
            if _reachable(held.user, chosen, purelib):
                pythonpath += (purelib,)
            logger.warning(
                "the app users cannot run the agent's Python: apps get another of the same version",
                extra={"agent_python": python, "app_python": chosen},
            )
    return AppSandbox(users=users, python=chosen, pythonpath=pythonpath)


def _reachable(user: AppUser, python: str, directory: str, module: str | None = None) -> bool:
    """Whether `user` can read `directory` (and import `module` from it) with `python`."""
    code = (
        f"import {module}"
        if module
        else "import os, sys; sys.exit(not os.access(sys.argv[1], os.R_OK | os.X_OK))"
    )
    argv = [python, "-S", "-c", code, directory]
    return _run_quietly_as(user, argv, timeout=60, env={"PYTHONPATH": directory}).returncode == 0


def _code_root_for(user: AppUser, python: str) -> str:
    """Where the app users import the built-in apps from: CODE_ROOT where they can reach it (the
    AMI's /opt/lighthpc/app); else a root-owned, read-only copy of the worker_ami package's apps
    in the temporary directory, as when the checkout lies under a directory only root may enter
    (a fresh clone in a 0700 temporary directory, a home directory)."""
    if _reachable(user, python, CODE_ROOT, "worker_ami.apps"):
        return CODE_ROOT
    package = Path(CODE_ROOT) / "worker_ami"
    sources = [package / "__init__.py", *sorted((package / "apps").glob("*.py"))]
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes() + b"\0")
    shared = Path(tempfile.gettempdir()) / "lighthpc-app-code"
    root = shared / digest.hexdigest()[:16]
    _root_owned_directory(shared)
    if not (root / "worker_ami" / "apps").is_dir():
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=shared))
        (staging / "worker_ami" / "apps").mkdir(parents=True)
        for source in sources:
            relative = source.relative_to(package.parent)
            (staging / relative).write_bytes(source.read_bytes())
            (staging / relative).chmod(0o644)
        for directory in (staging, staging / "worker_ami", staging / "worker_ami" / "apps"):
            directory.chmod(0o755)
        try:
            staging.rename(root)
        except OSError:  # another agent published the same copy first
            shutil.rmtree(staging, ignore_errors=True)
    _root_owned_directory(root)
    logger.warning(
        "the app users cannot reach the agent's code: the built-in apps run from a copy",
        extra={"code_root": CODE_ROOT, "copy": str(root)},
    )
    return str(root)


def _root_owned_directory(path: Path) -> None:
    """Make sure `path` is a directory of root's that nobody else may write (not a link)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o755)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise PermissionError(f"{path} is not a directory of root's that only root may write")


def _run_quietly_as(
    user: AppUser, argv: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """`argv` as `user`, from /, with no input or output and the given environment (none by
    default): how the sandbox probes interpreters and paths, and clears away an app user."""
    argv, as_user = _as_user(user, argv)
    return subprocess.run(  # noqa: S603 - argv list, no shell
        argv,
        cwd="/",
        env=env or {},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
        **as_user,
    )


def _interpreter_for(user: AppUser, python: str) -> str | None:
    """The first interpreter `user` can run the built-in apps with: `python`, or the system's of
    the same version. PermissionError if this process cannot switch to `user` at all."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [python, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    for candidate in dict.fromkeys(candidates):
        if not os.path.exists(candidate):
            continue
        try:
            probe = _run_quietly_as(user, [candidate, "-I", "-S", "-c", _PROBE], timeout=60)
        except PermissionError as e:
            if e.errno == errno.EPERM:  # from setgroups/setgid/setuid: no switching users here
                raise
            continue  # EACCES: the app user cannot reach this interpreter
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return candidate
    return None


# coreutils' chroot, to the same root, changes the uid, gid and groups just before the exec.
# Popen's own user/group arguments do the same, but they rule out vfork(), so every start
# copies the agent's page tables (49 ms from a 1.5 GB process here, against 2.2 ms this way).
# Not util-linux's setpriv: it execs with root's capabilities still in effect, so the app's
# program would be found and started past permissions its user does not have.
_CHROOT = next(
    (p for p in ("/usr/sbin/chroot", "/sbin/chroot", "/usr/bin/chroot") if os.access(p, os.X_OK)),
    None,
)
_CHROOT_CANNOT_EXEC = "chroot: failed to run command"  # after chroot's path


def _as_user(user: AppUser, argv: list[str]) -> tuple[list[str], dict[str, object]]:
    """`argv` and the Popen arguments that run it as `user`, with no other group."""
    if _CHROOT is not None and os.geteuid() == 0:
        # `+` marks the ids as numbers: chroot then looks no name up (NSS: /etc/passwd, /etc/group,
        # systemd's userdb), which was a third of its start.
        ids = [f"--userspec=+{user.uid}:+{user.gid}", "--groups=", "--skip-chdir", "/"]
        return [_CHROOT, *ids, *argv], {}
    return argv, {"user": user.uid, "group": user.gid, "extra_groups": []}


def run_app(
    argv: list[str],
    timeout: float,
    cwd: Path,
    log_path: Path,
    keep_going: Callable[[], bool] | None = None,
    tick_seconds: float = 1.0,
    stderr_cap: int = STDERR_LOG_BYTES,
    sandbox: AppSandbox | None = None,
    output: Path | None = None,
) -> AppResult:
    """Run `argv` in `cwd`; on timeout kill everything it started and report exit code -9.

    `keep_going` is called about every `tick_seconds` while the app runs (the agent's heartbeat
    and interruption check); when it returns False the app is killed and the result `aborted`.
    `log_path` gets the first `stderr_cap` bytes of stderr and its last STDERR_TAIL_BYTES.
    `output`, if given, is where the app writes its part: once the app is gone it must be a
    regular file of its own (never a link the agent would follow into another file).
    """
    sandbox = sandbox or app_sandbox()
    if sandbox.unavailable is not None:
        _open_log(log_path).close()
        return AppResult(126, sandbox.unavailable, 0.0)
    if sandbox.users is None:
        return _run(
            argv,
            timeout,
            cwd,
            log_path,
            keep_going,
            tick_seconds,
            stderr_cap,
            sandbox,
            None,
            output,
        )
    with sandbox.users.lease(keep_going) as held:
        if held is None:  # stopped while every app user was busy
            _open_log(log_path).close()
            return AppResult(0, "", 0.0, aborted=True)
        return _run(
            argv,
            timeout,
            cwd,
            log_path,
            keep_going,
            tick_seconds,
            stderr_cap,
            sandbox,
            held,
            output,
        )


def _run(
    argv: list[str],
    timeout: float,
    cwd: Path,
    log_path: Path,
    keep_going: Callable[[], bool] | None,
    tick_seconds: float,
    stderr_cap: int,
    sandbox: AppSandbox,
    held: _Lease | None,
    output: Path | None,
) -> AppResult:
    began = time.monotonic()
    # Opened before the app can touch its directory, without following a link it might plant.
    log = _open_log(log_path)
    user = held.user if held is not None else None
    if user is not None:
        os.chown(cwd, user.uid, user.gid)  # the one place the app may write
        os.chmod(cwd, 0o700)
    command, as_user = _as_user(user, argv) if user is not None else (argv, {})
    try:
        process = subprocess.Popen(  # noqa: S603 - argv list, no shell, by design
            command,
            cwd=cwd,
            env=sandbox.environment(cwd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, so the group can be killed
            umask=0o077,
            **as_user,
        )
    except OSError as e:
        log.close()
        if user is not None:
            _reclaim(cwd)
        return AppResult(127, f"cannot start {argv[0]!r}: {e}", time.monotonic() - began)
    watch = _Watch(process, log, stderr_cap)
    timed_out = aborted = False
    try:
        deadline = began + timeout
        while not watch.exited(min(tick_seconds, max(0.0, deadline - time.monotonic()))):
            timed_out = time.monotonic() >= deadline
            aborted = not timed_out and keep_going is not None and not keep_going()
            if timed_out or aborted:
                break
    finally:
        # The app has exited but is not reaped yet (or is being stopped): its pid, which is its
        # group's id, cannot have been reused, so this kills its own group and nobody else's.
        _kill_group(process.pid)
        exit_code = process.wait()
        if held is not None:
            # Whatever left the group (setsid, a double fork) is still this uid's, and only this
            # attempt's: the uid is held for it alone.
            held.quarantined = not _kill_every_process_of(held.user, sandbox.python)
            _reclaim(cwd)
        watch.close()
    tail = watch.tail()
    if command is not argv and exit_code in (126, 127) and _CHROOT_CANNOT_EXEC in tail[:300]:
        # chroot could not exec the app: said as when Popen itself cannot start it.
        exit_code = 127
        tail = f"cannot start {argv[0]!r}: {tail.strip().rsplit(': ', 1)[-1]}"
    if timed_out:
        tail = (tail + f"\nkilled after the transaction timeout of {timeout:g} s").strip()
    result = AppResult(exit_code, tail, time.monotonic() - began, timed_out, aborted)
    return _checked_output(result, output)


def _open_log(path: Path) -> IO[bytes]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.fdopen(os.open(path, flags, 0o600), "wb")


def _reclaim(cwd: Path) -> None:
    """The scratch directory back to the agent, closed to every app user (the uid's next app
    included) until the agent removes it."""
    os.chown(cwd, os.geteuid(), os.getegid())
    os.chmod(cwd, 0o700)


def _checked_output(result: AppResult, output: Path | None) -> AppResult:
    """The agent reads the part as its own user: it must be a file, not a link to another one."""
    if output is None or result.exit_code != 0 or result.aborted:
        return result
    try:
        s = os.lstat(output)
    except FileNotFoundError:
        return result
    if stat.S_ISREG(s.st_mode) and s.st_nlink == 1:
        return result
    output.unlink()
    reason = f"the app's output {output.name} is not a file of its own (a link?): refused"
    return AppResult(1, (result.stderr_tail + "\n" + reason).strip(), result.seconds)


# Run as the app user: SIGKILL to every process it may signal (kill(-1) skips the caller), until
# none of its uid lives. kill(-1) cannot miss a fork under way (the kernel refuses a fork whose
# parent has a fatal signal pending), so one round is enough; the loop is for certainty. Zombies
# (killed, not yet reaped by init) are dead already and do not count.
_KILL_EVERY_PROCESS = """
import os, signal, sys, time
me, uid = os.getpid(), os.getuid()
def alive():
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) == uid and fields["State"].split()[0] not in "ZX":
            return True
    return False
for _ in range(100):
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        sys.exit(0)
    if not alive():
        sys.exit(0)
    time.sleep(0.02)
sys.exit(1)
"""


# procps' kill(1): `kill -9 -1` as the app user is the same kill(-1), from a 20 KB
# binary that starts in a millisecond, where a Python interpreter takes tens of them (on every
# transaction: it was most of a short transaction's cost on a worker).
_KILL_BINARY = next((k for k in ("/bin/kill", "/usr/bin/kill") if os.access(k, os.X_OK)), None)
_KILL_ROUNDS = 100


def _kill_every_process_of(user: AppUser, python: str) -> bool:
    """True once no process of `user` is alive. Done by that user itself (kill(-1) signals
    every process the caller may, itself excepted), which needs no privilege and sees its own
    processes wherever /proc hides other users' (ProtectProc). Where the agent is root and
    procps' kill is there, the agent confirms from /proc (it sees every process) and only
    kill(1) runs as the user; otherwise a Python snippet does both, as the user.

    Most apps leave nothing once they exit (what they started has exited and been reaped):
    then no process of `user` exists, which one system call tells, and nothing is started."""
    if _no_process_of(user.uid):
        return True
    try:
        if _KILL_BINARY is None or os.geteuid() != 0:
            killer = _run_quietly_as(user, [python, "-I", "-S", "-c", _KILL_EVERY_PROCESS], 30)
            return killer.returncode == 0
        for _ in range(_KILL_ROUNDS):
            # Always kill first: a scan alone can miss a process that forks and exits as it
            # reads /proc; kill(-1) cannot (the kernel refuses a fork under a fatal signal).
            _run_quietly_as(user, [_KILL_BINARY, "-9", "-1"], 30)
            if not _has_live_process(user.uid):
                return True
            time.sleep(0.02)
        return False
    except (OSError, subprocess.TimeoutExpired) as e:
        logger.error("could not kill the app user's processes", extra={"error": repr(e)})
        return False


def _no_process_of(uid: int) -> bool:
    """Whether no process (nor thread, nor zombie) of real user `uid` exists: getpriority
    (PRIO_USER) then finds none, from one pass of the kernel over its task list, in 2 us here.
    The kill and the /proc scan it saves cost 1.3 ms and 1.6 ms (65 processes) of each attempt.
    A process that forks as the kernel passes is still seen: a child joins the list's tail,
    ahead of the pass, and its parent stays in the list until it is reaped. False where it
    cannot be told (a system call filter refusing getpriority): the kill and the scan then run."""
    try:
        os.getpriority(os.PRIO_USER, uid)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # refused: it cannot be told
    return False


def _has_live_process(uid: int) -> bool:
    """Whether a process of real user `uid` lives (zombies, dead already, do not count), from
    /proc. Run after an attempt that left a process: the status file is searched as bytes, not
    parsed (a few times cheaper), for its `Uid:` line's first field and its `State:` letter."""
    real_uid = b"\nUid:\t%d\t" % uid
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                status = f.read()
        except OSError:
            continue
        if real_uid in status:
            state = status.find(b"\nState:\t")
            if state >= 0 and status[state + 8 : state + 9] not in b"ZX":
                return True
    return False


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is already empty
        os.killpg(pgid, signal.SIGKILL)


class _Watch:
    """Waits for the app to exit while draining its stderr, on the slot's own thread: one
    poll() over a pidfd of the app (readable once it exits) and the stderr pipe. No reader
    thread per attempt and no sleeps between checks: the exit is seen as it happens (a short
    attempt took 5.1 ms here against 5.9, means of 3 runs of 500; its CPU stayed the same).
    Without pidfds (Linux before 5.3) the exit is checked with waitid between short polls.

    The stderr's head goes to disk up to a cap, its tail is kept in memory and appended at the
    end, the middle is counted and dropped; the pipe is drained for as long as the app runs, so
    an app writing past the cap is never blocked on a full pipe."""

    def __init__(self, process: subprocess.Popen[bytes], log: IO[bytes], cap: int) -> None:
        assert process.stderr is not None
        self._process = process
        self._pipe = process.stderr
        self._fd = self._pipe.fileno()
        self._log = log
        self._cap = cap
        self._head = 0  # bytes written to disk
        self._total = 0
        self._tail = b""  # the last STDERR_TAIL_BYTES of the stream
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._reading = True
        try:
            self._pidfd: int | None = os.pidfd_open(process.pid)
        except (AttributeError, OSError):  # no pidfds here: waitid between polls
            self._pidfd = None
        else:
            self._poll.register(self._pidfd, select.POLLIN)

    def exited(self, seconds: float) -> bool:
        """Drain stderr for up to `seconds`; True as soon as the app has exited (it is not
        reaped: its pid stays its own until `process.wait()`)."""
        until = time.monotonic() + seconds
        pause = 0.001  # without a pidfd: how long to poll before the next waitid
        while True:
            if self._pidfd is None and self._has_exited():
                return True
            left = until - time.monotonic()
            if left <= 0:
                return False
            wait = left if self._pidfd is not None else min(pause, left)
            pause = min(pause * 2, 0.05)
            for fd, _ in self._poll.poll(max(1, int(wait * 1000))):
                if fd == self._pidfd:
                    return True
                self._read()

    def _has_exited(self) -> bool:
        return (
            os.waitid(os.P_PID, self._process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        )

    def _read(self) -> None:
        try:
            chunk = os.read(self._fd, 1 << 16)
        except OSError:
            chunk = b""
        if not chunk:  # its end: everything that held the pipe is gone
            self._poll.unregister(self._fd)
            self._reading = False
            return
        room = self._cap - self._head
        if room > 0:
            self._log.write(chunk[:room])
            self._head += min(room, len(chunk))
        self._total += len(chunk)
        self._tail = (self._tail + chunk)[-STDERR_TAIL_BYTES:]

    def close(self) -> None:
        """Once the app's group is gone: read stderr to its end (for at most _DRAIN_SECONDS:
        a process that left the group may hold the pipe open for ever) and finish the log."""
        if self._pidfd is not None:
            self._poll.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        until = time.monotonic() + _DRAIN_SECONDS
        while self._reading and (left := until - time.monotonic()) > 0:
            for _ in self._poll.poll(max(1, int(left * 1000))):
                self._read()
        self._pipe.close()
        beyond = self._total - self._head  # not in the head
        if beyond > 0:
            tail = self._tail[-beyond:]
            dropped = beyond - len(tail)
            if dropped:
                self._log.write(f"\n[... {dropped} bytes of stderr dropped ...]\n".encode())
            self._log.write(tail)
        self._log.close()

    def tail(self) -> str:
        return self._tail.decode("utf-8", "replace").strip()
