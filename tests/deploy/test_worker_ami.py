"""The worker AMI's pieces agree with each other and with the agent, checked without AWS.

The contract: the launch template's user data runs `lighthpc-bootstrap KEY=VALUE...`, which
writes the EnvironmentFile of `lighthpc-worker.service`, which runs `worker_ami.agent`, whose
settings come from `Settings.from_env`; the Packer template uploads what provision.sh installs.
The apps run as the users provision.sh creates (worker_ami/runner.py's APP_UIDS), which the
firewall rule the unit loads keeps off the instance metadata service.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib.settings import Settings
from worker_ami.runner import APP_UID_BASE, APP_UID_COUNT, APP_UIDS

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "worker_ami"
BOOTSTRAP = WORKER / "bootstrap.sh"
UNIT = WORKER / "lighthpc-worker.service"
PACKER_DIR = WORKER / "packer"
TEMPLATE = PACKER_DIR / "worker.pkr.hcl"
PROVISION = PACKER_DIR / "provision.sh"
IMDS_GUARD = PACKER_DIR / "imds-guard.nft"

REQUIRED = {
    "LIGHTHPC_STAGE": "dev",
    "AWS_REGION": "eu-west-1",
    "SOURCE_BUCKET": "lighthpc-dev-sourcebucket-1a2b3c",
    "RESULT_BUCKET": "lighthpc-dev-resultbucket-4d5e6f",
}


def kv(values: dict[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in values.items()]


def env_dir(root: Path) -> Path:
    return root / "etc" / "lighthpc"


def run_bootstrap(
    root: Path, *args: str, path_prefix: Path | None = None
) -> subprocess.CompletedProcess[str]:
    path = os.environ.get("PATH", "/usr/bin:/bin")
    if path_prefix is not None:
        path = f"{path_prefix}{os.pathsep}{path}"
    return subprocess.run(
        ["bash", str(BOOTSTRAP), *args],
        env={"PATH": path, "LIGHTHPC_ROOT": str(root), "LC_ALL": "C"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def read_env_file(path: Path) -> dict[str, str]:
    """Parse it the way systemd does for the values the bootstrap allows (no quoting at all)."""
    env: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        assert sep == "=", f"not KEY=VALUE: {line!r}"
        assert key not in env, f"{key} twice"
        env[key] = value
    return env


def fake_command(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / name
    exe.write_text(f"#!/bin/sh\n{script}\n", encoding="utf-8")
    exe.chmod(0o755)


def leftovers(root: Path) -> list[str]:
    directory = env_dir(root)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ---- bootstrap ------------------------------------------------------------------------------


def test_bootstrap_writes_the_env_file_the_agent_reads(tmp_path: Path) -> None:
    given = {
        **REQUIRED,
        "MISSION_TABLE": "lighthpc-dev-MissionTable-ABC",
        "TRANSACTION_TABLE": "lighthpc-dev-TransactionTable-DEF",
        "INPUT_TABLE": "lighthpc-dev-InputTable-GHI",
        "TOPIC_ARN": "arn:aws:sns:eu-west-1:123456789012:lighthpc-dev-notify",
        "WORKER_LAUNCH_TEMPLATE": "lt-0123456789abcdef0",
        "LEASE_SECONDS": "120",
        "SPOT_POLL_SECONDS": "2.5",
        "LIGHTHPC_IMDS_URL": "http://169.254.169.254",
        "ALLOW_INLINE_ARGV": "false",
        "ALLOWED_PROGRAMS": "/opt/tools/bin/blastn,/usr/bin/samtools",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }
    result = run_bootstrap(tmp_path, "--no-start", *kv(given))
    assert result.returncode == 0, result.stderr
    env_file = env_dir(tmp_path) / "worker.env"
    assert leftovers(tmp_path) == ["worker.env"]  # no temporary file left next to it
    assert env_file.stat().st_mode & 0o777 == 0o600  # root's alone: no app user reads it
    env = read_env_file(env_file)
    # AWS_DEFAULT_REGION follows AWS_REGION for tools that only read the former.
    assert env == {**given, "AWS_DEFAULT_REGION": "eu-west-1"}

    settings = Settings.from_env(env)
    assert settings.stage == "dev"
    assert settings.region == "eu-west-1"
    assert settings.source_bucket == given["SOURCE_BUCKET"]
    assert settings.result_bucket == given["RESULT_BUCKET"]
    assert settings.mission_table == given["MISSION_TABLE"]
    assert settings.transaction_table == given["TRANSACTION_TABLE"]
    assert settings.input_table == given["INPUT_TABLE"]
    assert settings.topic_arn == given["TOPIC_ARN"]
    assert settings.launch_template == given["WORKER_LAUNCH_TEMPLATE"]
    assert settings.lease_seconds == 120
    assert settings.spot_poll_seconds == 2.5
    assert settings.imds_url == "http://169.254.169.254"
    # The stage's argv policy, which the agent checks again before it runs an app.
    assert settings.allow_inline_argv is False
    assert settings.allowed_programs == ("/opt/tools/bin/blastn", "/usr/bin/samtools")


def test_bootstrap_rewrites_the_file_and_starts_the_unit(tmp_path: Path) -> None:
    calls = tmp_path / "systemctl.calls"
    fake_bin = tmp_path / "bin"
    fake_command(fake_bin, "systemctl", f'echo "$*" >> "{calls}"')
    root = tmp_path / "root"
    first = run_bootstrap(root, *kv(REQUIRED), path_prefix=fake_bin)
    assert first.returncode == 0, first.stderr
    second = run_bootstrap(root, *kv({**REQUIRED, "LIGHTHPC_STAGE": "prod"}), path_prefix=fake_bin)
    assert second.returncode == 0, second.stderr
    assert read_env_file(env_dir(root) / "worker.env")["LIGHTHPC_STAGE"] == "prod"
    # The unit this repository ships, without waiting for it (see bootstrap.sh on cloud-final).
    assert calls.read_text().splitlines() == [f"start --no-block {UNIT.name}"] * 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["SOURCE_QUEUE=x"], "unknown key SOURCE_QUEUE", id="unknown-key"),
        pytest.param(["AWS_ENDPOINT_URL=http://evil"], "unknown key", id="endpoint-not-allowed"),
        pytest.param(["PYTHONPATH=/tmp"], "unknown key", id="pythonpath-not-allowed"),
        pytest.param(["lighthpc_stage=dev"], "key is upper case", id="lowercase-key"),
        pytest.param(["NOEQUALS"], "not KEY=VALUE", id="no-equals"),
        pytest.param(["--start-now"], "unknown option", id="unknown-option"),
        pytest.param(["TOPIC_ARN=a\nSOURCE_QUEUE=b"], "newline", id="newline"),
        pytest.param(["TOPIC_ARN=a\rb"], "newline", id="carriage-return"),
        pytest.param(["TOPIC_ARN=two words"], "unsafe", id="space"),
        pytest.param(['TOPIC_ARN="quoted"'], "unsafe", id="quote"),
        pytest.param(["TOPIC_ARN=a\\b"], "unsafe", id="backslash"),
        pytest.param(["TOPIC_ARN=${HOME}"], "unsafe", id="dollar"),
        pytest.param(["TOPIC_ARN=a;b"], "unsafe", id="semicolon"),
        pytest.param(["TOPIC_ARN=%h"], "unsafe", id="percent"),
        pytest.param(["TOPIC_ARN=a\tb"], "unsafe", id="tab"),
        pytest.param(["LIGHTHPC_STAGE=dev"], "given twice", id="duplicate"),
        pytest.param(["LEASE_SECONDS=ninety"], "LEASE_SECONDS", id="lease-not-a-number"),
        pytest.param(["LEASE_SECONDS=0"], "LEASE_SECONDS", id="lease-zero"),
        pytest.param(["SPOT_POLL_SECONDS=5s"], "SPOT_POLL_SECONDS", id="poll-not-a-number"),
        pytest.param(["ALLOW_INLINE_ARGV=maybe"], "true or false", id="inline-not-a-flag"),
    ],
)
def test_bootstrap_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_bootstrap(tmp_path, "--no-start", *kv(REQUIRED), *args)
    assert result.returncode != 0
    assert message in result.stderr
    # One message from the script itself (not a bash error), and never the raw value.
    assert result.stderr.strip().splitlines()[-1].startswith("lighthpc-bootstrap: ")
    assert not any(arg.partition("=")[2] in result.stderr for arg in args if "\n" in arg)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_bootstrap_requires_the_essentials(tmp_path: Path, missing: str) -> None:
    given = {key: value for key, value in REQUIRED.items() if key != missing}
    result = run_bootstrap(tmp_path, "--no-start", *kv(given))
    assert result.returncode != 0
    assert f"missing required {missing}" in result.stderr
    assert leftovers(tmp_path) == []
    # Present but empty is missing too.
    result = run_bootstrap(tmp_path, "--no-start", *kv(given), f"{missing}=")
    assert result.returncode != 0
    assert f"missing required {missing}" in result.stderr
    assert leftovers(tmp_path) == []


def test_a_failed_bootstrap_keeps_the_previous_file_whole(tmp_path: Path) -> None:
    assert run_bootstrap(tmp_path, "--no-start", *kv(REQUIRED)).returncode == 0
    env_file = env_dir(tmp_path) / "worker.env"
    before = env_file.read_bytes()

    rejected = run_bootstrap(tmp_path, "--no-start", *kv(REQUIRED), "BOGUS=1")
    assert rejected.returncode != 0
    # A failure after the temporary file exists (here: the rename) must clean it up too.
    fake_bin = tmp_path / "bin"
    fake_command(fake_bin, "mv", "exit 1")
    changed = {**REQUIRED, "LIGHTHPC_STAGE": "prod"}
    failed = run_bootstrap(tmp_path, "--no-start", *kv(changed), path_prefix=fake_bin)
    assert failed.returncode != 0

    assert env_file.read_bytes() == before
    assert leftovers(tmp_path) == ["worker.env"]


# ---- systemd unit ---------------------------------------------------------------------------


def unit_entries() -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; keys such as SystemCallFilter may repeat."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not Key=Value: {raw!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(section: str, key: str) -> list[str]:
    return [v for s, k, v in unit_entries() if s == section and k == key]


def unit_value(section: str, key: str) -> str:
    values = unit_values(section, key)
    assert len(values) == 1, f"[{section}] {key}: {values}"
    return values[0]


# What the agent needs to run each app as its app user and clean up after it (runner.py), and
# nothing more: no CAP_NET_ADMIN (the firewall rule), no CAP_SYS_ADMIN, no CAP_SYS_PTRACE.
AGENT_CAPABILITIES = {"CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_KILL", "CAP_DAC_OVERRIDE"}


def test_unit_runs_the_agent_as_root_with_only_what_running_apps_needs() -> None:
    # Root, to switch to the app users (setuid from root to a non-root uid drops every
    # capability, so the apps get none); bounded to the capabilities that takes.
    assert unit_value("Service", "User") == "root"
    assert set(unit_value("Service", "CapabilityBoundingSet").split()) == AGENT_CAPABILITIES
    assert unit_value("Service", "AmbientCapabilities") == ""
    assert unit_value("Service", "NoNewPrivileges") == "yes"  # no setuid binary gains anything
    denied = [v for v in unit_values("Service", "SystemCallFilter") if v.startswith("~")]
    for group in ("@privileged", "@setuid", "@chown"):  # setuid, setgroups, chown: needed
        assert not any(group in v.split() or "~" + group in v.split() for v in denied), group
    assert any("@debug" in v for v in denied)  # the apps inherit it: no ptrace
    argv = shlex.split(unit_value("Service", "ExecStart"))
    assert argv[0] == "/opt/lighthpc/venv/bin/python"
    assert argv[1:3] == ["-m", "worker_ami.agent"]
    assert "--no-terminate" not in argv
    workdir = argv[argv.index("--workdir") + 1]
    state = f"/var/lib/{unit_value('Service', 'StateDirectory')}"
    assert workdir.startswith(state + "/"), "scratch must be writable under ProtectSystem=strict"
    environment = dict(v.split("=", 1) for v in unit_values("Service", "Environment"))
    assert environment["PYTHONPATH"] == unit_value("Service", "WorkingDirectory")
    assert environment["PYTHONPATH"] == "/opt/lighthpc/app"  # where provision.sh puts the code
    assert unit_value("Service", "Restart") == "on-failure"
    assert int(unit_value("Unit", "StartLimitBurst")) > 1
    assert unit_value("Unit", "SuccessAction") == "poweroff"
    assert unit_value("Install", "WantedBy") == "multi-user.target"


def test_unit_reads_the_file_the_bootstrap_writes(tmp_path: Path) -> None:
    env_file = unit_value("Service", "EnvironmentFile")
    assert not env_file.startswith("-"), "a missing env file must not be silently ignored"
    assert unit_value("Unit", "ConditionPathExists") == env_file
    assert run_bootstrap(tmp_path, "--no-start", *kv(REQUIRED)).returncode == 0
    assert (tmp_path / env_file.lstrip("/")).is_file()


HARDENING = {
    "NoNewPrivileges": "yes",
    "AmbientCapabilities": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
}


def test_unit_is_hardened_but_can_reach_imds_and_aws() -> None:
    for key, expected in HARDENING.items():
        assert unit_value("Service", key) == expected, key
    assert "@system-service" in unit_values("Service", "SystemCallFilter")
    families = unit_value("Service", "RestrictAddressFamilies").split()
    assert {"AF_INET", "AF_INET6"} <= set(families)
    assert not families[0].startswith("~")
    # Anything that would cut the agent off from 169.254.169.254 or HTTPS.
    for key in ("PrivateNetwork", "IPAddressDeny", "IPAddressAllow", "RestrictNetworkInterfaces"):
        assert unit_values("Service", key) == [], key


# ---- Packer template ------------------------------------------------------------------------


def hcl_locals(text: str) -> dict[str, str]:
    block = re.search(r"^locals \{\n(.*?)^\}", text, re.S | re.M)
    assert block, "no locals block"
    return dict(re.findall(r'^  (\w+)\s*=\s*"([^"]*)"', block.group(1), re.M))


def resolve(value: str, local: dict[str, str]) -> str:
    for _ in range(5):
        value = value.replace("${path.root}", str(PACKER_DIR))
        value = re.sub(r"\$\{local\.(\w+)\}", lambda m: local[m.group(1)], value)
    assert "${" not in value, f"unresolved interpolation in {value!r}"
    return value


def file_provisioners() -> list[tuple[Path, str]]:
    """(local source, remote destination) of each file provisioner, interpolations resolved."""
    text = TEMPLATE.read_text(encoding="utf-8")
    local = hcl_locals(text)
    found = []
    for block in re.findall(r'provisioner "file" \{(.*?)\n  \}', text, re.S):
        source = re.search(r'^\s*source\s*=\s*"([^"]+)"', block, re.M)
        destination = re.search(r'^\s*destination\s*=\s*"([^"]+)"', block, re.M)
        assert source and destination, block
        found.append((Path(resolve(source.group(1), local)), resolve(destination.group(1), local)))
    return found


def staged_paths() -> dict[str, Path]:
    """Path under the staging directory -> the local file or directory that lands there."""
    staging = hcl_locals(TEMPLATE.read_text(encoding="utf-8"))["staging"]
    staged = {}
    for source, destination in file_provisioners():
        # A destination ending in "/" receives the source under its own name.
        remote = destination + source.name if destination.endswith("/") else destination
        assert remote.startswith(staging + "/"), f"{remote} is outside {staging}"
        staged[remote.removeprefix(staging + "/")] = source
    return staged


def test_every_file_the_template_uploads_exists() -> None:
    uploads = file_provisioners()
    sources = {source.resolve() for source, _ in uploads}
    for expected in ("chalicelib", "worker_ami", "requirements.txt"):
        assert (ROOT / expected).resolve() in sources, expected
    assert UNIT.resolve() in sources
    assert BOOTSTRAP.resolve() in sources
    for source, _ in uploads:
        assert source.exists(), f"{source} (uploaded by {TEMPLATE.name}) does not exist"
    scripts = re.findall(r'^\s*script\s*=\s*"([^"]+)"', TEMPLATE.read_text(), re.M)
    assert scripts
    local = hcl_locals(TEMPLATE.read_text(encoding="utf-8"))
    for script in scripts:
        assert Path(resolve(script, local)).is_file(), script


def test_provision_script_expects_exactly_what_is_uploaded() -> None:
    text = PROVISION.read_text(encoding="utf-8")
    listed = re.search(r"for path in (.*?); do", text, re.S)
    assert listed, "provision.sh no longer checks its inputs"
    expected = listed.group(1).replace("\\\n", " ").split()
    staged = staged_paths()
    for path in expected:
        top, _, rest = path.partition("/")
        if path in staged:
            assert staged[path].exists(), path
        else:  # inside an uploaded directory, e.g. worker_ami/requirements.txt
            assert top in staged and (staged[top] / rest).exists(), f"{path} is not uploaded"
    assert set(staged) <= set(expected), "uploaded but never used by provision.sh"
    assert "BUILD_DIR=${local.staging}" in TEMPLATE.read_text(encoding="utf-8")


def test_worker_requirements_resolve_next_to_the_root_ones() -> None:
    # On the build instance worker_ami/requirements.txt sits in BUILD_DIR/worker_ami and the root
    # file in BUILD_DIR, as in a checkout; the -r must point across exactly that step.
    lines = (WORKER / "requirements.txt").read_text(encoding="utf-8").splitlines()
    includes = [line.split(None, 1)[1] for line in lines if line.startswith("-r ")]
    assert includes == ["../requirements.txt"]
    assert (WORKER / includes[0]).resolve() == ROOT / "requirements.txt"
    pins = dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))
    assert "boto3" in pins  # Lambda's runtime has it, the worker must bring it


def test_smoke_check_expectation_matches_the_app(tmp_path: Path) -> None:
    text = PROVISION.read_text(encoding="utf-8")
    given = re.search(r"^printf ('[^']*') >\"\$\{smoke\}/app/input\"$", text, re.M)
    call = re.search(r"seq_stats --input input --output part (--start \d+ --end \d+)$", text, re.M)
    expected = re.findall(r"^expected\+?=(\$'[^']*')$", text, re.M)
    assert given and call and expected
    script = f"printf {given.group(1)}; "
    script += f"expected={expected[0]}; " + "".join(f"expected+={e}; " for e in expected[1:])
    script += 'printf "%s" "$expected" >&2'
    shell = subprocess.run(["bash", "-c", script], capture_output=True, timeout=10, check=True)
    (tmp_path / "input").write_bytes(shell.stdout)
    argv = [sys.executable, "-m", "worker_ami.apps.seq_stats", "--input", "input"]
    app = subprocess.run(
        [*argv, "--output", "part", *call.group(1).split()],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert app.returncode == 0, app.stderr
    # provision.sh compares with "$(cat part)", which drops trailing newlines.
    assert (tmp_path / "part").read_bytes().rstrip(b"\n") == shell.stderr


# ---- the apps' users and their firewall rule -------------------------------------------------


def provision_constant(name: str) -> str:
    found = re.search(rf"^readonly {name}=(\S+)$", PROVISION.read_text(encoding="utf-8"), re.M)
    assert found, f"provision.sh has no readonly {name}"
    return found.group(1)


def test_provision_creates_the_app_users_the_runner_uses() -> None:
    assert int(provision_constant("APP_UID_BASE")) == APP_UID_BASE
    assert int(provision_constant("APP_USERS")) == APP_UID_COUNT
    text = PROVISION.read_text(encoding="utf-8")
    loop = re.search(
        r"^for \(\(i = 0; i < APP_USERS; i\+\+\)\); do\n(.*?)^done$", text, re.S | re.M
    )
    assert loop, "provision.sh no longer creates the app users in a loop"
    body = loop.group(1)
    assert "id=$((APP_UID_BASE + i))" in body
    assert re.search(r"useradd --system .*--uid \"\$\{id\}\" --gid \"\$\{id\}\"", body)
    assert "--shell /usr/sbin/nologin" in body
    assert "groupadd --system" in body and '--gid "${id}"' in body
    # Each is checked: its own uid and gid, no supplementary group.
    assert '"${id}:${id}:${id}"' in body


def guard_rules() -> list[str]:
    return [
        line.strip()
        for line in IMDS_GUARD.read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("meta skuid")
    ]


def test_the_firewall_rule_keeps_every_app_user_and_only_them_off_imds() -> None:
    rules = guard_rules()
    targets = set()
    for rule in rules:
        match = re.fullmatch(r"meta skuid (\d+)-(\d+) (ip6?) daddr (\S+) counter reject", rule)
        assert match, rule
        low, high, family, address = match.groups()
        # Exactly the runner's uids: the agent (root) and everyone else still reach IMDS.
        assert range(int(low), int(high) + 1) == APP_UIDS, rule
        targets.add((family, address))
    assert targets == {("ip", "169.254.169.254"), ("ip6", "fd00:ec2::254")}
    text = IMDS_GUARD.read_text(encoding="utf-8")
    assert "type filter hook output priority 0; policy accept;" in text  # a filter, not a wall
    # Replaced whole on every load, so a restart never stacks or half-applies it.
    table = "table inet lighthpc_imds_guard"
    assert text.index(f"\n{table}\n") < text.index(f"\ndelete {table}\n") < text.index(table + " {")


def test_the_unit_loads_the_rule_before_the_agent_starts() -> None:
    guard = provision_constant("GUARD")
    text = PROVISION.read_text(encoding="utf-8")
    assert '"${BUILD_DIR}/worker_ami/packer/imds-guard.nft" "${GUARD}"' in text
    (pre,) = unit_values("Service", "ExecStartPre")
    # "+": with the privileges the agent does not have (CAP_NET_ADMIN). Its failure fails the
    # start: the agent never runs an app without the rule.
    assert shlex.split(pre) == ["+/usr/sbin/nft", "-f", guard]
    assert "nftables" in re.search(r"^dnf install .*$", text, re.M).group(0)


def test_the_bake_checks_the_rule_on_a_real_instance() -> None:
    """What no test here can do, provision.sh does on the build instance: load the rule, then
    the agent's user must get an IMDSv2 token and an app user must not."""
    text = PROVISION.read_text(encoding="utf-8")
    smoke = text[text.index('log "smoke check"') : text.index('log "cleaning up"')]
    load = smoke.index('nft -f "${GUARD}"')
    as_root = smoke.index('imds_token >/dev/null || die "root cannot reach')
    as_app = smoke.index('if runuser -u "${app_user}" -- bash -c "$(declare -f imds_token)')
    unload = smoke.index("nft delete table inet lighthpc_imds_guard")
    assert load < as_root < as_app < unload
    assert "http://169.254.169.254/latest/api/token" in smoke
    assert 'app_user="lighthpc-app-0"' in smoke
    # The built-in app runs as an app user too, and cannot write its input.
    assert 'as_app "${VENV}/bin/python" -m worker_ami.apps.seq_stats' in smoke
    assert 'die "an app user could write its read-only input"' in smoke


@pytest.mark.parametrize("script", [BOOTSTRAP, PROVISION], ids=lambda p: p.name)
def test_scripts_are_strict_bash(script: Path) -> None:
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=10)


# ---- packer validate ------------------------------------------------------------------------


def packer() -> str:
    found = shutil.which("packer")
    if found is None:
        reason = "packer is not on PATH (apt-get install -y packer)"
        if os.environ.get("LIGHTHPC_REQUIRE_DEPLOY_TOOLS") == "1":
            pytest.fail(f"LIGHTHPC_REQUIRE_DEPLOY_TOOLS=1 but {reason}")
        pytest.skip(reason)
    return found


def packer_validate(directory: Path) -> subprocess.CompletedProcess[str]:
    # CHECKPOINT_DISABLE: no call home to HashiCorp's version check from a test.
    env = {**os.environ, "CHECKPOINT_DISABLE": "1", "PACKER_NO_COLOR": "1"}
    return subprocess.run(
        [packer(), "validate", "-syntax-only", str(directory)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_packer_template_passes_syntax_validation() -> None:
    result = packer_validate(PACKER_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Syntax-only check passed" in result.stdout


def test_packer_syntax_validation_catches_a_broken_template(tmp_path: Path) -> None:
    broken = TEMPLATE.read_text(encoding="utf-8").replace("build {", "build {{", 1)
    (tmp_path / TEMPLATE.name).write_text(broken, encoding="utf-8")
    result = packer_validate(tmp_path)
    assert result.returncode != 0
