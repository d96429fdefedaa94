"""The app's reach on a worker: what an app can and cannot get at, run by the real runner and
the real agent (store, S3 and EC2 faked, the metadata endpoint the local one).

As root (this machine, CI, the worker AMI) each app runs as an app user of its own: it cannot
read the instance's credentials (its environment holds none, the metadata endpoint refuses it),
cannot write its input, and leaves no process behind. Not as root, the app runs as the agent's
user: only the environment scrub holds, and the tests of the rest skip, saying so.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chalicelib.apps import ProgramNotAllowed, check_program
from chalicelib.layout import MISSION_TAG, failure_key
from chalicelib.settings import Settings
from chalicelib.states import TransactionStatus
from local import imds
from local.imds import MetadataServer, socket_owner
from tests.unit.test_agent_reliability import INPUT, MISSION_ID, mission, world
from worker_ami import runner
from worker_ami.agent import WorkerAgent
from worker_ami.metadata import Imdsv2Metadata
from worker_ami.runner import APP_UIDS, AppResult, AppUsers, app_sandbox, run_app

T = TransactionStatus
ROOT = os.geteuid() == 0
as_root_only = pytest.mark.skipif(
    not ROOT,
    reason="not root: apps run as the agent's own user here, so a separate uid, the metadata "
    "owner match, a read-only input and the kill of every process of the app's uid are not "
    "enforced (the environment scrub is, and is tested)",
)
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# Credentials and endpoints the agent's own environment may hold (locally it does).
AGENT_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAAGENTKEY",
    "AWS_SECRET_ACCESS_KEY": "agent-secret",
    "AWS_SESSION_TOKEN": "agent-session",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/creds",
    "AWS_PROFILE": "agent",
    "LIGHTHPC_IMDS_URL": "http://127.0.0.1:9",
    "RESULT_BUCKET": "results",
}


def probe(tmp_path: Path, code: str, *args: str, **kwargs: Any) -> AppResult:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    sandbox = kwargs.pop("sandbox", app_sandbox())
    return run_app(
        [sandbox.python, "-c", code, *args],
        60,
        scratch,
        scratch / "e.log",
        sandbox=sandbox,
        **kwargs,
    )


def test_the_app_environment_holds_no_credentials(tmp_path: Path) -> None:
    """Enforced as any user: the app sees an allow list of the agent's environment, no more."""
    sandbox = dataclasses.replace(app_sandbox(), environ={**os.environ, **AGENT_SECRETS})
    code = "import json, os, sys; sys.stderr.write(json.dumps(dict(os.environ)))"
    result = probe(tmp_path, code, sandbox=sandbox)
    assert result.exit_code == 0, result.stderr_tail
    env = json.loads(result.stderr_tail)
    assert not {k for k in env if k.startswith(("AWS_", "LIGHTHPC_"))}, env
    assert not set(AGENT_SECRETS.values()) & set(env.values())
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "TMPDIR"} | {
        "PYTHONPATH",
        "PYTHONDONTWRITEBYTECODE",
    }
    scratch = str(tmp_path / "scratch")
    assert env["HOME"] == env["TMPDIR"] == scratch  # no ~/.aws of the agent's either


@as_root_only
def test_the_app_runs_as_an_app_user_with_no_groups(tmp_path: Path) -> None:
    code = "import json, os, sys; sys.stderr.write(json.dumps([os.getresuid(), os.getgroups()]))"
    result = probe(tmp_path, code)
    (ruid, euid, suid), groups = json.loads(result.stderr_tail)
    assert ruid == euid == suid and ruid in APP_UIDS
    assert groups == []


@as_root_only
def test_apps_running_at_once_get_a_uid_each_and_give_it_back(tmp_path: Path) -> None:
    seen: list[int] = []
    code = "import os, sys, time; sys.stderr.write(str(os.getuid())); time.sleep(1)"

    def one(name: str) -> None:
        result = probe(tmp_path / name, code)
        seen.append(int(result.stderr_tail))

    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    threads = [threading.Thread(target=one, args=(n,)) for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 3, seen
    # All back: a fresh pool's first lease is the first uid again.
    with AppUsers().lease() as held:
        assert held is not None and held.user.uid == APP_UIDS[0]


# The app tries the agent's metadata endpoint (given as an argument: its environment has no URL)
# with IMDSv2 and with botocore's credential chain, then reports.
REACH = r"""
import json, os, sys, urllib.request
url = sys.argv[1]
report = {}
try:
    request = urllib.request.Request(
        url + "/latest/api/token", method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    report["token"] = urllib.request.urlopen(request, timeout=5).read().decode()
except Exception as e:
    report["token_error"] = repr(e)
try:  # botocore is on the app's path only where the app users can reach the agent's packages
    from botocore.utils import InstanceMetadataFetcher
except ImportError:
    report["botocore"] = "unreachable"
else:
    fetched = InstanceMetadataFetcher(timeout=2, num_attempts=1, base_url=url + "/")
    report["fetched"] = fetched.retrieve_iam_role_credentials()
    import botocore.session
    os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = url + "/"
    found = botocore.session.get_session().get_credentials()
    report["chain"] = None if found is None else found.method
sys.stderr.write(json.dumps(report))
"""


@as_root_only
@linux_only
def test_the_app_cannot_read_the_instance_credentials_the_agent_can(tmp_path: Path) -> None:
    from botocore.utils import InstanceMetadataFetcher

    server = MetadataServer("i-reach", {MISSION_TAG: MISSION_ID}).start()
    try:
        # The agent (this process, root) reads the instance and its role's credentials.
        assert Imdsv2Metadata(server.url).identity().instance_id == "i-reach"
        fetcher = InstanceMetadataFetcher(timeout=2, num_attempts=1, base_url=server.url + "/")
        assert fetcher.retrieve_iam_role_credentials()["access_key"]
        refused_before = server.refused
        result = probe(tmp_path, REACH, server.url)
    finally:
        server.stop()
    assert result.exit_code == 0, result.stderr_tail
    report = json.loads(result.stderr_tail)
    assert "token" not in report and "token_error" in report, report
    if "botocore" not in report:  # a checkout the app users can reach: botocore's chain too
        assert report["fetched"] == {} and report["chain"] is None, report
    assert server.refused > refused_before


@linux_only
def test_the_owner_match_refuses_by_the_socket_owner() -> None:
    """The emulated firewall rule on its own (as any user): refuse this very process's uid."""
    server = MetadataServer("i-self", {}, refused_uids={os.getuid()}).start()
    try:
        with pytest.raises(OSError):
            Imdsv2Metadata(server.url).identity()
        assert server.refused >= 1
    finally:
        server.stop()
    # And the owner lookup itself: a socket of ours is ours.
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as client,
    ):
        assert socket_owner(client.getsockname(), listener.getsockname()) == os.getuid()


@linux_only
def test_the_owner_lookup_asks_the_kernel_for_one_socket_and_reads_proc_where_it_cannot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as client,
    ):
        mine, server = client.getsockname(), listener.getsockname()
        try:
            asked = imds._sock_diag_owner(mine, server)
        except OSError:  # a kernel (or a sandbox) without sock_diag: /proc answers, as below
            pass
        else:
            assert asked == os.getuid()
            assert imds._sock_diag_owner(mine, (server[0], 1)) is None  # no such socket
        assert socket_owner(mine, server) == os.getuid()
        assert socket_owner(mine, (server[0], 1)) is None

        def no_netlink(*_: object) -> int | None:
            raise OSError("no sock_diag here")

        monkeypatch.setattr(imds, "_sock_diag_owner", no_netlink)
        assert socket_owner(mine, server) == os.getuid()  # from /proc/net/tcp
        assert socket_owner(mine, (server[0], 1)) is None


# Tries everything an app could do to its input, leaves a daemon (setsid: out of the process
# group) and a plain child behind, then writes what it managed.
SPOIL_AND_STAY = r"""
import json, os, sys, time
path, output = sys.argv[1], sys.argv[2]
report = {"read": open(path, "rb").read().decode()}
def attempt(name, action):
    try:
        action()
        report[name] = "done"
    except OSError as e:
        report[name] = type(e).__name__
attempt("write", lambda: open(path, "r+b").write(b"SPOILED"))
attempt("chmod", lambda: os.chmod(path, 0o666))
attempt("chmod_cached", lambda: os.chmod(os.path.join(os.path.dirname(path), "../input"), 0o666))
attempt("replace_cached", lambda: open("../input", "wb").write(b"SPOILED"))
attempt("new_file_beside", lambda: open("../planted", "wb").write(b"x"))
read, write = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(write, str(os.getpid()).encode())
        time.sleep(120)
    os._exit(0)
os.wait()
report["daemon"] = int(os.read(read, 32))
import subprocess
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
report["child"] = child.pid
report["uid"] = os.getuid()
open(output, "w").write(json.dumps(report))
"""


def _alive(pid: int, uid: int) -> bool:
    """Whether `pid` is a live (not zombie) process of `uid`. By pid and uid, not "any app
    uid": other agents on this machine (other test runs) may be running apps meanwhile."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return False
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return int(fields["Uid"].split()[0]) == uid and fields["State"].split()[0] not in "ZX"


@as_root_only
@linux_only
def test_through_the_agent_the_app_cannot_write_its_input_nor_stay(tmp_path: Path) -> None:
    # One line (a config refuses control characters in argv), so the program travels encoded.
    encoded = base64.b64encode(SPOIL_AND_STAY.encode()).decode()
    one_line = f"exec(__import__('base64').b64decode('{encoded}'))"
    w = world(tmp_path, mission(count=2, code=one_line))
    server = MetadataServer("i-agent", {MISSION_TAG: MISSION_ID}).start()
    try:
        # The agent reads its identity through the metadata endpoint, as on EC2.
        agent = WorkerAgent(
            settings=w.settings,
            store=w.store,  # type: ignore[arg-type]
            aws=w,  # its s3 and ec2
            metadata=Imdsv2Metadata(server.url),
            workdir=w.workdir,
            clock=w.clock,
            sleep=w.clock.sleep,
            slots=1,
            python=sys.executable,
        )
        report = agent.run()
    finally:
        server.stop()
    assert report.succeeded == 2, w.status()
    for index in range(2):
        seen = json.loads(w.part(index) or b"{}")
        assert seen["read"] == INPUT.decode()  # it reads its input...
        assert seen["uid"] in APP_UIDS
        # ...and can do nothing else to it, nor plant anything beside the agent's copy.
        for action in ("write", "chmod", "chmod_cached", "replace_cached", "new_file_beside"):
            assert seen[action] == "PermissionError", (action, seen)
        # Neither the daemon (out of the process group) nor the child outlived its attempt.
        assert not _alive(seen["daemon"], seen["uid"]) and not _alive(seen["child"], seen["uid"])
    assert (w.workdir / "input").read_bytes() == INPUT
    assert not (w.workdir / "planted").exists()
    assert w.s3.downloads == 1  # the cached input was never changed


@as_root_only
@linux_only
@pytest.mark.parametrize("how", ["exits", "is stopped"])
def test_nothing_of_the_app_outlives_it(tmp_path: Path, how: str) -> None:
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        open('daemon.pid', 'w').write(f'{os.getpid()} {os.getuid()}')\n"
        "        time.sleep(120)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "while not os.path.exists('daemon.pid'):\n"
        "    time.sleep(0.01)\n"
        f"time.sleep({0 if how == 'exits' else 120})\n"
    )
    began = time.monotonic()
    stop_at = began + 1.5
    result = probe(tmp_path, code, keep_going=lambda: time.monotonic() < stop_at, tick_seconds=0.1)
    assert result.aborted is (how == "is stopped")
    assert time.monotonic() - began < 20
    daemon, uid = map(int, (tmp_path / "scratch" / "daemon.pid").read_text().split())
    assert uid in APP_UIDS
    assert not _alive(daemon, uid)


@as_root_only
def test_a_part_that_links_elsewhere_is_refused(tmp_path: Path) -> None:
    """The agent reads the part as root: a symlink to a file of root's must not become a part."""
    secret = tmp_path / "secret"
    secret.write_text("root's only")
    secret.chmod(0o600)
    code = "import os, sys; os.symlink(sys.argv[1], 'part.out')"
    output = tmp_path / "scratch" / "part.out"
    result = probe(tmp_path, code, str(secret), output=output)
    assert result.exit_code == 1
    assert "is not a file of its own" in result.stderr_tail
    assert not os.path.lexists(output)
    assert secret.read_text() == "root's only"


# ---- the stage's argv policy, checked again by the worker -----------------------------------

RESTRICTED = Settings.from_env({"LIGHTHPC_STAGE": "dev"})  # deployed: no inline argv


def test_one_rule_for_the_api_and_the_worker() -> None:
    check_program(["anything"], Settings.from_env({}))  # local: inline argv allowed
    allowed = dataclasses.replace(RESTRICTED, allowed_programs=("/usr/bin/samtools",))
    check_program(["/usr/bin/samtools", "view"], allowed)
    with pytest.raises(ProgramNotAllowed, match="not on this stage's allow list"):
        check_program(["/usr/bin/python3", "-c", "evil"], allowed)
    with pytest.raises(ProgramNotAllowed):
        check_program(["{python}"], RESTRICTED)


def test_the_worker_refuses_an_argv_its_stage_does_not_allow(tmp_path: Path) -> None:
    """A mission item written past the API (anyone with access to the table) names a program
    the stage does not allow: every transaction fails at once, no retry, and nothing runs."""
    ran = tmp_path / "ran"
    code = f"open({str(ran)!r}, 'w').write('ran'); open(__import__('sys').argv[2], 'w')"
    m = mission(count=2, code=code, max_attempts=3)  # validated with the local stage's rules
    w = world(tmp_path, m)
    w.settings = dataclasses.replace(w.settings, allow_inline_argv=False, allowed_programs=())
    report = w.agent().run()
    assert report.succeeded == 0
    assert w.status() == [(T.FAILED, 1), (T.FAILED, 1)]  # one attempt each: no retry
    assert not ran.exists()
    marker = w.s3.objects[w.settings.result_bucket, failure_key(MISSION_ID, 0, 1)].decode()
    assert "refused by the worker" in marker and "not on this stage's allow list" in marker


def test_a_program_on_the_allow_list_runs(tmp_path: Path) -> None:
    w = world(tmp_path, mission(count=1))
    w.settings = dataclasses.replace(
        w.settings, allow_inline_argv=False, allowed_programs=("{python}",)
    )
    assert w.agent().run().succeeded == 1
    assert w.part(0) == INPUT


@as_root_only
@linux_only
def test_built_in_apps_run_from_a_checkout_only_root_may_enter(tmp_path: Path, monkeypatch):
    """A fresh clone in a 0700 temporary directory (or a home directory): the app users cannot
    reach the agent's code, so the built-in apps run from a root-owned read-only copy."""
    import shutil

    from worker_ami import runner

    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    checkout = hidden / "repo"
    shutil.copytree(Path(runner.CODE_ROOT) / "worker_ami", checkout / "worker_ami")
    monkeypatch.setattr(runner, "CODE_ROOT", str(checkout))
    runner._decide_sandbox.cache_clear()
    try:
        sandbox = app_sandbox()
    finally:
        runner._decide_sandbox.cache_clear()
    (code_root, *_) = sandbox.pythonpath
    assert not code_root.startswith(str(hidden)), sandbox.pythonpath
    copy = Path(code_root)
    assert copy.stat().st_uid == 0 and not copy.stat().st_mode & 0o022
    assert (copy / "worker_ami" / "apps" / "seq_stats.py").read_bytes() == (
        checkout / "worker_ami" / "apps" / "seq_stats.py"
    ).read_bytes()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "in.txt").write_text("ACGT\nGGCC\n")
    argv = [sandbox.python, "-m", "worker_ami.apps.seq_stats", "--input", "in.txt"]
    argv += ["--output", "out.txt", "--start", "0", "--end", "2"]
    result = run_app(argv, 60, scratch, scratch / "e.log", sandbox=sandbox)
    assert result.exit_code == 0, result.stderr_tail
    assert len((scratch / "out.txt").read_text().splitlines()) == 2


@as_root_only
@linux_only
def test_the_kill_after_an_attempt_runs_only_when_a_process_of_its_uid_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One system call tells that the app left nothing: no kill process, no /proc scan. A
    daemon left behind (setsid, out of the group) is still found, killed and waited for."""
    started: list[list[str]] = []
    run_quietly_as = runner._run_quietly_as

    def recorded(user: Any, argv: list[str], *args: Any, **kwargs: Any) -> Any:
        started.append(argv)
        return run_quietly_as(user, argv, *args, **kwargs)

    # One app user of its own, with no process now: what earlier tests killed may stay a
    # zombie for as long as init leaves it unreaped (the last uid is the next test's).
    free = next(u for u in reversed(APP_UIDS[:-1]) if runner._no_process_of(u))
    users = AppUsers(uids=range(free, free + 1), lock_dir=tmp_path / "locks")
    sandbox = dataclasses.replace(app_sandbox(), users=users)  # its probes ran before
    monkeypatch.setattr(runner, "_run_quietly_as", recorded)
    code = "import subprocess; subprocess.run(['true'])"  # its child exits and is reaped first
    assert probe(tmp_path, code, sandbox=sandbox).exit_code == 0
    assert started == [], started
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    open('daemon.pid', 'w').write(f'{os.getpid()} {os.getuid()}')\n"
        "    time.sleep(120)\n"
        "while not os.path.exists('daemon.pid'):\n"
        "    time.sleep(0.01)\n"
    )
    assert probe(tmp_path, code, sandbox=sandbox).exit_code == 0
    assert started, "the daemon was left: the kill must run"
    daemon, uid = map(int, (tmp_path / "scratch" / "daemon.pid").read_text().split())
    assert not _alive(daemon, uid)  # (its zombie may wait for init a while: not alive)


@linux_only
def test_where_getpriority_is_refused_the_uid_is_not_taken_for_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert runner._no_process_of(APP_UIDS[-1])  # no app of this run uses the last uid
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not runner._no_process_of(os.getuid())  # this very process, at least
    finally:
        sleeper.kill()
        sleeper.wait()

    def refused(*_: Any) -> int:
        raise PermissionError(1, "Operation not permitted")  # as a seccomp filter answers

    monkeypatch.setattr(os, "getpriority", refused)
    assert not runner._no_process_of(APP_UIDS[-1])
