"""The bad-input catalogue: each case gets its clear error, and nothing is half-written.

Bad configs: a 400 that names the field, and no mission, no input binding, no start request and
no instance. Bad inputs: the mission FAILS with an email that says why, and no transaction is
written and no instance launched. Odd but valid keys (spaces, unicode, URL-encoding) just work.
"""

from __future__ import annotations

import json
import time

import boto3
import pytest

from chalicelib.context import get_context
from chalicelib.sweeper import sweep
from local.inprocess import InProcessCluster
from tests.functional.test_mission import SAMPLE, kmer_config

MAX_TRANSACTIONS = 50
MAX_INPUT_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One embedded AWS for the whole catalogue: the cases must leave nothing behind anyway."""
    limits = {"MAX_TRANSACTIONS": str(MAX_TRANSACTIONS), "MAX_INPUT_BYTES": str(MAX_INPUT_BYTES)}
    workdir = tmp_path_factory.mktemp("bad-input")
    with InProcessCluster.running(workdir=workdir, env=limits) as cluster:
        cluster.deliver_source_events()  # S3's s3:TestEvent, so the queue starts empty
        yield cluster


def cfg(**changes):
    config = kmer_config("catalogue", "bad/x.fa")
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = config
        for part in path:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return json.dumps(config).encode()


DELETE = object()
ARGV = ["{python}", "-c", "print(1)"]

BAD_CONFIGS = [
    ("not JSON", b"{name: 1", "(body)"),
    ("empty body", b"", "(body)"),
    ("JSON array", b"[1, 2]", "(body)"),
    ("JSON string", b'"mission"', "(body)"),
    ("too large", b'{"name": "' + b"x" * 70_000 + b'"}', "(body)"),
    ("name missing", cfg(name=DELETE), "name"),
    ("name blank", cfg(name="   "), "name"),
    ("name with a newline", cfg(name="a\nb"), "name"),
    ("name too long", cfg(name="n" * 129), "name"),
    ("name not a string", cfg(name=7), "name"),
    ("input missing", cfg(input=DELETE), "input"),
    ("input absolute", cfg(input="/etc/passwd"), "input"),
    ("input with control char", cfg(input="a\x01b"), "input"),
    ("input over 1024 bytes", cfg(input="ü" * 600), "input"),
    ("split missing", cfg(split=DELETE), "split"),
    ("split mode unknown", cfg(split__mode="words"), "split"),
    ("count zero", cfg(split__count=0), "split.count"),
    ("count beyond the interval", cfg(split__count=97), "split.count"),
    (
        "count beyond the stage",
        cfg(split__count=51, split__interval={"start": 0, "end": 999}),
        "split.count",
    ),
    ("count as a string", cfg(split__count="12"), "split.count"),
    ("interval reversed", cfg(split__interval={"start": 9, "end": 1}), "split.interval"),
    (
        "lines per transaction zero",
        cfg(split={"mode": "lines", "lines_per_transaction": 0}, app={"builtin": "seq-stats"}),
        "split.lines_per_transaction",
    ),
    ("unknown built-in app", cfg(app={"builtin": "blast"}), "app"),
    ("app neither builtin nor argv", cfg(app={"cmd": "ls"}), "app"),
    ("app parameter out of range", cfg(app__params__k=99), "app.params.k"),
    ("app parameter unknown", cfg(app__params__kk=9), "app.params.kk"),
    ("app built-in with the wrong split", cfg(app={"builtin": "seq-stats"}), "app"),
    ("argv empty", cfg(app={"argv": []}), "app.argv"),
    ("argv unknown placeholder", cfg(app={"argv": ["run", "{inputs}"]}), "app.argv"),
    ("argv placeholder with a spec", cfg(app={"argv": ["run", "{index:04d}"]}), "app.argv"),
    ("argv with a NUL", cfg(app={"argv": ["run\x00", "x"]}), "app.argv"),
    ("instance type malformed", cfg(instances__types=["C5 LARGE"]), "instances.types.0"),
    ("instance types repeated", cfg(instances__types=["c5.large", "c5.large"]), "instances.types"),
    ("market unknown", cfg(instances__market="reserved"), "instances.market"),
    ("max instances zero", cfg(instances__max_instances=0), "instances.max_instances"),
    ("slots too many", cfg(instances__slots=1000), "instances.slots"),
    ("max attempts eleven", cfg(max_attempts=11), "max_attempts"),
    ("max attempts boolean", cfg(max_attempts=True), "max_attempts"),
    (
        "transaction timeout zero",
        cfg(timeouts__transaction_seconds=0),
        "timeouts.transaction_seconds",
    ),
    ("notify not an address", cfg(notify="owner"), "notify"),
    (
        "exit rule pattern",
        cfg(exit_rules=[{"on_exit_code": "abc", "action": "fail"}]),
        "exit_rules.0.on_exit_code",
    ),
    (
        "exit rule action",
        cfg(exit_rules=[{"on_exit_code": "1", "action": "ignore"}]),
        "exit_rules.0.action",
    ),
    ("unknown field", cfg(priority=5), "priority"),
]


def nothing_written(cluster: InProcessCluster) -> None:
    assert json.loads(cluster.get("/missions").body)["missions"] == []
    queued = cluster.sqs.get_queue_attributes(
        QueueUrl=cluster.stack.source_queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]["ApproximateNumberOfMessages"]
    assert queued == "0"  # no start request
    inputs = boto3.client("dynamodb").scan(TableName=get_context().settings.input_table)
    assert inputs["Items"] == []
    reservations = cluster.ec2.describe_instances()["Reservations"]
    assert reservations == []


@pytest.mark.parametrize(("case", "body", "field"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config(shared: InProcessCluster, case: str, body: bytes, field: str):
    response = shared.api.http.post(
        "/missions", headers={"Content-Type": "application/json"}, body=body
    )
    assert response.status_code == 400, (case, response.body)
    answer = json.loads(response.body)
    assert answer["error"] == "invalid mission config"
    assert field in [f["field"] for f in answer["fields"]], answer
    assert all(f["reason"] for f in answer["fields"])
    nothing_written(shared)


def failed_with(cluster: InProcessCluster, mission_id: str, reason: str) -> None:
    mission = json.loads(cluster.get(f"/missions/{mission_id}").body)
    assert mission["status"] == "FAILED", mission
    assert reason in mission["error"]
    listed = json.loads(cluster.get(f"/missions/{mission_id}/transactions").body)
    assert listed["transactions"] == []
    assert cluster.instance_states(mission_id) == {}
    emails = [e for e in cluster.emails() if e.attributes.get("mission_id") == mission_id]
    assert len(emails) == 1 and reason in emails[0].body
    assert emails[0].subject.endswith(" FAILED")


LINES = {"split": {"mode": "lines", "lines_per_transaction": 1}, "app": {"builtin": "seq-stats"}}
LINES_ARGV = {"split": {"mode": "lines", "lines_per_transaction": 1}, "app": {"argv": ARGV}}

BAD_INPUTS = [
    ("empty file", {}, b"", "is empty"),
    ("binary file for kmer-match", {}, b"\x00\x01\x02ACGT" * 50, "looks binary"),
    ("not UTF-8 for kmer-match", {}, b"ACGT\xff\xfe\xfa" * 50, "looks binary"),
    ("binary file split by lines", LINES_ARGV, b"\x00\x00\n\x00" * 50, "looks binary"),
    ("huge file", {}, b"ACGT\n" * (MAX_INPUT_BYTES // 5 + 10), "this stage accepts at most"),
    ("too many lines", LINES, b"ACGT\n" * (MAX_TRANSACTIONS + 1), "allows at most 50"),
]


@pytest.mark.parametrize(
    ("case", "changes", "data", "reason"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_file(shared, case: str, changes: dict, data: bytes, reason: str):
    key = f"bad/{case}.in"
    config = kmer_config(case, key, **changes)
    response = shared.submit(config)
    assert response.status_code == 201, response.body
    mission_id = json.loads(response.body)["mission_id"]
    shared.upload(key, data)
    shared.deliver_source_events()
    failed_with(shared, mission_id, reason)
    # The key is free again for a corrected upload and config.
    assert get_context().store.missions.awaiting(key) is None


def test_input_deleted_before_planning(shared: InProcessCluster):
    key = "bad/deleted.fa"
    mission_id = json.loads(shared.submit(kmer_config("deleted", key)).body)["mission_id"]
    shared.upload(key, SAMPLE)
    shared.s3.delete_object(Bucket=get_context().settings.source_bucket, Key=key)
    shared.deliver_source_events()  # the upload's event arrives after the delete
    failed_with(shared, mission_id, "does not exist")


def test_input_that_never_arrives(shared: InProcessCluster):
    key = "bad/never.fa"
    config = kmer_config("never", key, timeouts={"mission_seconds": 60})
    mission_id = json.loads(shared.submit(config).body)["mission_id"]
    shared.deliver_source_events()
    import dataclasses

    later = dataclasses.replace(get_context(), clock=lambda: time.time() + 120)
    assert mission_id in sweep(later).timed_out
    failed_with(shared, mission_id, "never arrived within 60 s")


@pytest.mark.parametrize(
    "key",
    ["odd keys/with space.fa", "odd/ünïcödé/名前.fa", "odd/plus+percent%20and#hash?.fa"],
)
def test_odd_but_valid_keys_work(shared: InProcessCluster, key: str):
    config = kmer_config("odd key", key, count=2)
    shared.upload(key, SAMPLE)  # upload first, config second: both paths see the same key
    mission_id = json.loads(shared.submit(config).body)["mission_id"]
    shared.deliver_source_events()
    shared.run_workers(mission_id)
    shared.deliver_result_events()
    mission = json.loads(shared.get(f"/missions/{mission_id}").body)
    assert mission["status"] == "SUCCEEDED", mission
    assert mission["input"]["key"] == key
