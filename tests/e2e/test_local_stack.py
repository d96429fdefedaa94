"""End to end: `lighthpc up` as a subprocess, driven only through HTTP and S3, like a user."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest

from local.demo import demo_config, demo_input, expected_result
from worker_ami.apps.seq_stats import stats

ROOT = Path(__file__).resolve().parents[2]
REFERENCES = 160


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    log = open(home / "up.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local.cli",
            "--home",
            str(home),
            "up",
            "--aws-port",
            "0",
            "--api-port",
            "0",
            "--max-workers",
            "4",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    info_path = home / "stack.json"
    deadline = time.monotonic() + 120
    while not info_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"lighthpc up did not start:\n{(home / 'up.log').read_text()}")
        time.sleep(0.2)
    info = json.loads(info_path.read_text())
    yield {**info, "home": home, "process": process}
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    assert process.returncode == 0, (home / "up.log").read_text()
    assert not info_path.exists()  # `up` cleans up after itself


def http(stack, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        stack["api_url"] + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def s3(stack):
    return boto3.client(
        "s3",
        endpoint_url=stack["aws_endpoint"],
        region_name=stack["region"],
        aws_access_key_id="user",
        aws_secret_access_key="user",
    )


def wait_for_email(stack, mission_id, timeout=180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(Path(stack["outbox"]).glob(f"*-{mission_id}.eml"))
        if found:
            time.sleep(1.0)  # a duplicate would land right after: give it the chance
            found = list(Path(stack["outbox"]).glob(f"*-{mission_id}.eml"))
            assert len(found) == 1, found
            return found[0].read_text()
        time.sleep(0.3)
    _, mission = http(stack, "GET", f"/missions/{mission_id}")
    pytest.fail(f"no email for {mission_id}; mission: {mission}")


def merged(stack, mission_id) -> bytes:
    _, mission = http(stack, "GET", f"/missions/{mission_id}")
    bucket, key = mission["result"].removeprefix("s3://").split("/", 1)
    return s3(stack).get_object(Bucket=bucket, Key=key)["Body"].read()


@pytest.mark.parametrize("order", ["config-first", "upload-first"])
def test_a_mission_through_http_and_s3(stack, order):
    config = demo_config(transactions=16, references=REFERENCES, workers=3)
    config["input"] = f"e2e/{order}/sample one.fa"
    sample = demo_input(REFERENCES).encode()
    if order == "upload-first":
        s3(stack).put_object(Bucket=stack["source_bucket"], Key=config["input"], Body=sample)
    status, body = http(stack, "POST", "/missions", config)
    assert status == 201, body
    mission_id = body["mission_id"]
    if order == "config-first":
        s3(stack).put_object(Bucket=stack["source_bucket"], Key=config["input"], Body=sample)
    email = wait_for_email(stack, mission_id)
    assert "Subject: lighthpc: demo: k-mer match SUCCEEDED" in email
    assert "To: you@example.org" in email
    assert "16 in all, 16 succeeded, 0 failed" in email
    assert merged(stack, mission_id) == expected_result(sample.decode(), REFERENCES)


def test_inline_argv_app_in_lines_mode(stack):
    body = b"".join(f"{'ACGT' * (i % 5 + 1)}\n".encode() for i in range(30))
    config = {
        "name": "inline argv",
        "input": "e2e/reads.txt",
        "split": {"mode": "lines", "lines_per_transaction": 7},
        "app": {
            "argv": [
                "{python}",
                "-m",
                "worker_ami.apps.seq_stats",
                "--input",
                "{input}",
                "--output",
                "{output}",
                "--start",
                "{start}",
                "--end",
                "{end}",
            ]
        },
        "instances": {"max_instances": 2},
    }
    status, created = http(stack, "POST", "/missions", config)
    assert status == 201, created
    s3(stack).put_object(Bucket=stack["source_bucket"], Key=config["input"], Body=body)
    email = wait_for_email(stack, created["mission_id"])
    assert "5 in all, 5 succeeded" in email
    expected = "".join(stats(body.splitlines(keepends=True), 0)).encode()
    assert merged(stack, created["mission_id"]) == expected


def run_cli(stack, *args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "local.cli", "--home", str(stack["home"]), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_submit_watch_status_cancel(stack, tmp_path):
    sample = tmp_path / "sample.fa"
    sample.write_text(demo_input(REFERENCES))
    config = tmp_path / "config.json"
    config.write_text(json.dumps(demo_config(transactions=8, references=REFERENCES, workers=2)))
    submitted = run_cli(stack, "submit", str(sample), "--config", str(config), "--key", "cli/s.fa")
    assert submitted.returncode == 0, submitted.stderr
    mission_id = submitted.stdout.split()[1]
    watched = run_cli(stack, "watch", mission_id)
    assert watched.returncode == 0, watched.stderr
    assert "8/8" in watched.stdout and "Subject: lighthpc: demo: k-mer match SUCCEEDED" in (
        watched.stdout
    )
    listed = run_cli(stack, "status")
    assert mission_id in listed.stdout
    # Cancelling a finished mission is refused with a clear message.
    refused = run_cli(stack, "cancel", mission_id)
    assert refused.returncode == 1 and "HTTP 409" in refused.stderr


def test_cancel_a_mission_that_waits_for_its_input(stack):
    config = demo_config(transactions=4, references=REFERENCES, workers=1)
    config["input"] = "e2e/never-uploaded.fa"
    status, created = http(stack, "POST", "/missions", config)
    assert status == 201
    cancelled = run_cli(stack, "cancel", created["mission_id"])
    assert cancelled.returncode == 0, cancelled.stderr
    email = wait_for_email(stack, created["mission_id"])
    assert "CANCELLED" in email
    # The input key is free again.
    status, _ = http(stack, "POST", "/missions", config)
    assert status == 201


def test_bad_config_over_http_names_the_field(stack):
    config = demo_config(transactions=4, references=REFERENCES, workers=1)
    config["instances"]["types"] = ["not a type"]
    status, body = http(stack, "POST", "/missions", config)
    assert status == 400
    assert [f["field"] for f in body["fields"]] == ["instances.types.0"]


def test_cli_without_a_stack_says_so(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "local.cli", "--home", str(tmp_path), "status"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no local stack found" in result.stderr and "lighthpc up" in result.stderr
