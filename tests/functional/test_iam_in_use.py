"""The IAM policies against the code: every AWS call each function (and the worker) makes in
real missions on moto must be allowed by that principal's policy, and every action a policy
grants must be one the code uses (or one AWS itself uses on the function's behalf).

moto does not enforce IAM, so this test is the enforcement: calls are recorded through a
botocore hook, attributed to the principal whose code is running (the scenarios run one
principal at a time), turned into IAM actions and resource ARNs, and matched against the
policies' Allow statements. Of their conditions only `dynamodb:Attributes` is evaluated (the
worker's writes are limited to the attributes it names: keys, update and condition together).
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from chalicelib import missions as missions_api
from chalicelib.auth import LOCAL_CALLER, caller_of
from chalicelib.capacity import launch_template_key, worker_tags
from chalicelib.context import get_context, reset_process_state
from chalicelib.domain import Usage
from chalicelib.events import MergeRequest
from chalicelib.layout import result_key
from chalicelib.results import handle_result_object
from chalicelib.store.models import NEEDS_CARE, MissionModel
from chalicelib.sweeper import SweepReport, sweep
from local import inprocess
from local.faults import on_every_client
from local.inprocess import InProcessCluster
from local.staged_merge import stage_mission
from tests.deploy.policies import (
    FUNCTION_POLICY_FILES,
    SERVICE_SID_PREFIX,
    function_statements,
    resolved,
    worker_statements,
)
from tests.functional.test_auth import signed_as
from tests.functional.test_mission import kmer_config, submit
from tests.functional.test_reliability import SAMPLE, SLOW, claim, lose_a_worker, mission

ACCOUNT, REGION = "123456789012", "us-east-1"
JSON = {"Content-Type": "application/json"}

# Operations whose IAM action is not "<service>:<OperationName>".
_ACTION_OF = {
    ("s3", "HeadObject"): ["s3:GetObject"],
    ("s3", "ListObjectsV2"): ["s3:ListBucket"],
    ("s3", "CreateMultipartUpload"): ["s3:PutObject"],
    ("s3", "UploadPart"): ["s3:PutObject"],
    ("s3", "CompleteMultipartUpload"): ["s3:PutObject"],
    ("s3", "ListMultipartUploads"): ["s3:ListBucketMultipartUploads"],
    ("dynamodb", "TransactGetItems"): ["dynamodb:GetItem"],
    # EC2 Fleet launches the instances as the caller: it needs these too.
    ("ec2", "CreateFleet"): [
        "ec2:CreateFleet",
        "ec2:RunInstances",
        "ec2:CreateTags",
        "iam:PassRole",
    ],
}
_TRANSACT_ACTIONS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
}


def _table_arn(name: str, index: str | None = None) -> str:
    arn = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"
    return f"{arn}/index/{index}" if index else arn


def requested(service: str, operation: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """The (action, resource ARN) pairs IAM evaluates for one API call."""
    if service == "dynamodb" and operation == "TransactWriteItems":
        pairs = []
        for item in params["TransactItems"]:
            ((kind, body),) = item.items()
            pairs.append((_TRANSACT_ACTIONS[kind], _table_arn(body["TableName"])))
        return pairs
    if service == "dynamodb" and operation in ("BatchGetItem", "BatchWriteItem"):
        return [(f"dynamodb:{operation}", _table_arn(t)) for t in params["RequestItems"]]
    if service == "dynamodb" and operation == "TransactGetItems":
        return [
            ("dynamodb:GetItem", _table_arn(i["Get"]["TableName"])) for i in params["TransactItems"]
        ]
    if service == "s3" and operation == "UploadPartCopy":  # writes the target, reads the source
        source = params["CopySource"]
        return [
            ("s3:PutObject", f"arn:aws:s3:::{params['Bucket']}/{params['Key']}"),
            ("s3:GetObject", f"arn:aws:s3:::{source['Bucket']}/{source['Key']}"),
        ]
    if service == "s3" and operation == "DeleteObjects":  # IAM evaluates each key
        return [
            ("s3:DeleteObject", f"arn:aws:s3:::{params['Bucket']}/{o['Key']}")
            for o in params["Delete"]["Objects"]
        ]
    actions = _ACTION_OF.get((service, operation), [f"{service}:{operation}"])
    if service == "s3" and operation in ("GetObject", "HeadObject") and params.get("VersionId"):
        actions = ["s3:GetObjectVersion"]  # reading a given version is its own action
    if service == "dynamodb":
        resource = _table_arn(params["TableName"], params.get("IndexName"))
    elif service == "s3":
        key = params.get("Key")
        resource = f"arn:aws:s3:::{params['Bucket']}" + (f"/{key}" if key else "")
    elif service == "sqs":
        name = params.get("QueueUrl", params.get("QueueName", "")).rsplit("/", 1)[-1]
        resource = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
    elif service == "sns":
        resource = params["TopicArn"]
    elif service == "ec2" and operation == "TerminateInstances":
        return [
            ("ec2:TerminateInstances", f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{i}")
            for i in params["InstanceIds"]
        ]
    else:
        resource = "*"  # resolved by the policy check: these actions take no resource
    return [(action, resource) for action in actions]


def attributes_named(service: str, operation: str, params: dict[str, Any]) -> list[frozenset[str]]:
    """What IAM's `dynamodb:Attributes` holds for each pair `requested` returns: the top-level
    attribute names the request names (its key, its item, its expressions; PynamoDB names every
    attribute of an expression through ExpressionAttributeNames)."""

    def named(body: dict[str, Any]) -> frozenset[str]:
        names = set(body.get("Key", {})) | set(body.get("Item", {}))
        names |= {n.split(".")[0] for n in body.get("ExpressionAttributeNames", {}).values()}
        return frozenset(names | set(body.get("AttributesToGet", [])))

    if service != "dynamodb":
        return [frozenset()] * len(requested(service, operation, params))
    if operation in ("TransactWriteItems", "TransactGetItems"):
        return [named(next(iter(item.values()))) for item in params["TransactItems"]]
    return [named(params)] * len(requested(service, operation, params))


class Recorder:
    """Attributes each AWS call to the principal whose code runs now."""

    def __init__(self) -> None:
        # The principal of every thread that did not say its own (a worker's slot threads,
        # started by the thread that runs the workers), and each thread's own, once it says it.
        self.principal: str | None = None
        self._own = threading.local()
        self.calls: dict[str, set[tuple[str, str]]] = {}
        # The same calls with the attribute names each one names (DynamoDB's; empty elsewhere).
        self.named: dict[str, set[tuple[str, str, frozenset[str]]]] = {}

    def current(self) -> str | None:
        return self._own.__dict__.get("principal", self.principal)

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        principal = self.current()
        if principal is None:
            return  # the test itself (uploads, Lambda's own queue polling, inspection)
        service, operation = model.service_model.service_name, model.name
        pairs = requested(service, operation, params)
        self.calls.setdefault(principal, set()).update(pairs)
        attributes = attributes_named(service, operation, params)
        self.named.setdefault(principal, set()).update(
            (action, resource, names)
            for (action, resource), names in zip(pairs, attributes, strict=True)
        )

    @contextmanager
    def acting_as(self, principal: str | None) -> Iterator[None]:
        previous, self.principal = self.principal, principal
        unset = object()
        own = self._own.__dict__.get("principal", unset)
        self._own.principal = principal
        try:
            yield
        finally:
            self.principal = previous
            if own is unset:
                del self._own.principal
            else:
                self._own.principal = own


@pytest.fixture
def recorded(tmp_path) -> Iterator[tuple[InProcessCluster, Recorder]]:
    recorder = Recorder()
    listing = inprocess.mission_instances
    # A short lease, so that a 1.5 s app outlives a third of it and the heartbeat runs.
    short_lease = {"LEASE_SECONDS": "3"}
    try:
        with (
            on_every_client("provide-client-params.*.*", recorder),
            InProcessCluster.running(workdir=tmp_path, env=short_lease) as cluster,
        ):
            _attribute(cluster, recorder)
            yield cluster, recorder
    finally:
        inprocess.mission_instances = listing


def _attribute(cluster: InProcessCluster, recorder: Recorder) -> None:
    """Route every way the scenarios run code through `acting_as` its principal."""
    http_request = cluster.api.http.request
    invoke = cluster.api.lambda_.invoke
    run_workers = cluster.run_workers

    # Each function is a process of its own in Lambda: nothing it looked up is cached for the
    # next one (the queue URL is the one lookup chalicelib caches).
    def request(*args: Any, **kwargs: Any) -> Any:
        get_context().aws.queue_urls.clear()
        with recorder.acting_as("api_handler"):
            return http_request(*args, **kwargs)

    def lambda_invoke(function: str, *args: Any, **kwargs: Any) -> Any:
        get_context().aws.queue_urls.clear()
        with recorder.acting_as(function):
            return invoke(function, *args, **kwargs)

    def workers(*args: Any, **kwargs: Any) -> Any:
        with recorder.acting_as("worker"):
            return run_workers(*args, **kwargs)

    def harness_listing(*args: Any, **kwargs: Any) -> Any:
        with recorder.acting_as(None):
            return listing(*args, **kwargs)

    listing = inprocess.mission_instances
    inprocess.mission_instances = harness_listing  # restored by the fixture
    cluster.api.http.request = request  # type: ignore[method-assign]
    cluster.api.lambda_.invoke = lambda_invoke  # type: ignore[method-assign]
    cluster.run_workers = workers  # type: ignore[method-assign]


def _scheduled(cluster: InProcessCluster) -> Any:
    return cluster.api.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
    )


def run_scenarios(cluster: InProcessCluster, recorder: Recorder) -> list[SweepReport]:
    """One of everything: missions that succeed and fail, Spot warnings, sweeps, a cancel.

    Returns the sweeps' reports (the test checks that every kind of repair happened)."""
    sweeps: list[SweepReport] = []

    def sweeper(ctx: Any = None) -> None:
        get_context().aws.queue_urls.clear()  # each function is a process of its own
        with recorder.acting_as("sweeper"):
            sweeps.append(sweep(ctx or get_context()))

    # A mission that succeeds, submitted twice with an Idempotency-Key, with every read route;
    # a second config for its input while it waits is a 409.
    headers = {"Content-Type": "application/json", "Idempotency-Key": "ok-1"}
    body = json.dumps(kmer_config("ok", "ok.fa", count=4))
    done = json.loads(cluster.api.http.post("/missions", headers=headers, body=body).body)
    done = done["mission_id"]
    cluster.api.http.post("/missions", headers=headers, body=body)  # the retry: same answer
    busy = cluster.api.http.post("/missions", headers=JSON, body=body)  # no key: a new config
    assert busy.status_code == 409, busy.body
    broken = json.dumps(kmer_config("broken", "broken.fa", max_attempts=0))
    cluster.api.http.post("/missions", headers={**headers, "Idempotency-Key": "b"}, body=broken)
    cluster.upload("ok.fa", SAMPLE)
    cluster.deliver_source_events()
    cluster.run_workers(done)
    reported = _reported_but_still_running(recorder, done)
    cluster.deliver_result_events()
    assert mission(cluster, done)["status"] == "SUCCEEDED"
    get_context().aws.ec2.terminate_instances(InstanceIds=[reported])
    cluster.get("/missions")
    with signed_as("arn:aws:iam::123456789012:user/alice"):  # not an operator: her own only
        cluster.get("/missions")
        cluster.get("/me")
    cluster.get("/openapi.json")
    cluster.get(f"/missions/{done}/transactions?limit=2")
    # The dashboard's reads (chalicelib.dashboard).
    cluster.get("/overview?status=SUCCEEDED")
    cluster.get(f"/missions/{done}/map?first=0&last=3&cells=2")
    cluster.get(f"/missions/{done}/timeline?limit=2")
    cluster.get(f"/missions/{done}/outcome")

    # Its email lost after it finished (the sender died): the sweeper sends it.
    MissionModel(done).update(
        actions=[
            MissionModel.notified_at.remove(),
            MissionModel.notify_lease_until.remove(),
            MissionModel.needs_care.set(NEEDS_CARE),
        ]
    )
    sweeper()

    # A mission whose app always fails: a retry, then failure markers and a FAILED email; and
    # one whose app outlives a third of its lease, so the heartbeat renews it.
    argv = ["{python}", "-c", "import sys; sys.exit('no licence')"]
    bad = submit(cluster, kmer_config("bad", "bad.fa", count=2, app={"argv": argv}, max_attempts=2))
    cluster.upload("bad.fa", SAMPLE)
    cluster.deliver_source_events()
    cluster.run_workers(bad)
    cluster.deliver_result_events()
    assert mission(cluster, bad)["status"] == "FAILED"
    slow = ["{python}", "-c", SLOW, "{output}", "1.5"]
    beat = submit(cluster, kmer_config("beat", "beat.fa", count=1, app={"argv": slow}))
    cluster.upload("beat.fa", SAMPLE)
    cluster.deliver_source_events()
    cluster.run_workers(beat)
    cluster.deliver_result_events()
    assert mission(cluster, beat)["status"] == "SUCCEEDED"

    # Short transactions claimed in blocks, one of them failing once inside its block: the
    # worker cuts the block there, delivers what ran before it, sends the rest back.
    once = (
        "import sys; open(sys.argv[3], 'w');"
        " sys.exit(3 if int(sys.argv[1]) == 9 and int(sys.argv[2]) == 1 else 0)"
    )
    packed_argv = ["{python}", "-c", once, "{index}", "{attempt}", "{output}"]
    packed_config = kmer_config("packed", "packed.fa", count=24, app={"argv": packed_argv})
    packed_config["instances"] = {"max_instances": 1, "slots": 2}
    packed = submit(cluster, packed_config)
    cluster.upload("packed.fa", SAMPLE)
    cluster.deliver_source_events()
    cluster.run_workers(packed)
    cluster.deliver_result_events()
    assert mission(cluster, packed)["status"] == "SUCCEEDED"
    assert any(t.span > 1 for t in get_context().store.transactions.of(packed))

    # A cancel while the apps run: each worker stops its app and settles its own block (a lease
    # of 6 s, so the agents look at their mission every 2 s).
    _cancel_while_running(cluster, recorder)

    # A part changed in S3 before the merge (its worker's stamp copied): never merged, and the
    # mission fails naming it.
    forged = submit(cluster, kmer_config("forged", "forged.fa", count=2))
    cluster.upload("forged.fa", SAMPLE)
    cluster.deliver_source_events()
    cluster.run_workers(forged)
    results, part = cluster.stack.outputs["ResultBucketName"], f"parts/{forged}/00000001.1.out"
    stamp = cluster.s3.head_object(Bucket=results, Key=part)["Metadata"]
    cluster.s3.put_object(Bucket=results, Key=part, Body=b"forged\n", Metadata=stamp)
    cluster.deliver_result_events()
    assert mission(cluster, forged)["status"] == "FAILED"

    # Lines mode: the scheduler counts the input's lines and writes where each slice begins;
    # each worker reads its slice's offsets, then only that range of the input.
    lines = submit(
        cluster,
        {
            "name": "lines",
            "input": "reads.txt",
            "split": {"mode": "lines", "lines_per_transaction": 2},
            "app": {"builtin": "seq-stats"},
            "instances": {"max_instances": 1, "slots": 2},
        },
    )
    cluster.upload("reads.txt", b"ACGT\nGGCC\nTTAA\n")
    cluster.deliver_source_events()
    cluster.run_workers(lines)
    cluster.deliver_result_events()
    assert mission(cluster, lines)["status"] == "SUCCEEDED"

    # Bytes mode: chunks of the input cut at FASTA records; each worker reads only its range.
    chunked = submit(
        cluster,
        {
            "name": "bytes",
            "input": "genome.fa",
            "split": {"mode": "bytes", "chunks": 3},
            "app": {"builtin": "fasta-stats"},
            "instances": {"max_instances": 1, "slots": 2},
        },
    )
    cluster.upload("genome.fa", b">a\nACGT\n>b\nGGCC\n>c\nTTAA\n")
    cluster.deliver_source_events()
    cluster.run_workers(chunked)
    cluster.deliver_result_events()
    assert mission(cluster, chunked)["status"] == "SUCCEEDED"

    # A broken upload fails its mission at planning.
    empty = submit(cluster, kmer_config("empty", "empty.fa"))
    cluster.upload("empty.fa", b"")
    cluster.deliver_source_events()
    cluster.deliver_result_events()
    assert mission(cluster, empty)["status"] == "FAILED"

    # A Spot warning for an instance holding a lease: the control side hands the work back and
    # launches a replacement.
    deadline = {"mission_seconds": 600}
    spot = submit(cluster, kmer_config("spot", "spot.fa", count=2, timeouts=deadline))
    cluster.upload("spot.fa", SAMPLE)
    cluster.deliver_source_events()
    instance_id = sorted(cluster.instance_states(spot))[0]
    for slot in (0, 1):  # every index handed out: the retries are found through their index
        claim(spot, f"{instance_id}/{slot}", time.time(), 300)
    event = cluster.api.events.generate_cw_event(
        source="aws.ec2",
        detail_type="EC2 Spot Instance Interruption Warning",
        detail={"instance-id": instance_id, "instance-action": "terminate"},
        resources=[f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{instance_id}"],
    )
    response = cluster.api.lambda_.invoke("spot_interruption", event)
    assert response.payload == {"handed_back": 2}

    # The sweeper: a lost worker out of attempts, a launch that came short (as scheduled).
    sweepy = submit(cluster, kmer_config("sweepy", "sweepy.fa", max_attempts=1))
    cluster.upload("sweepy.fa", SAMPLE)
    cluster.deliver_source_events()
    lose_a_worker(cluster, sweepy)
    alive = [i for i, state in cluster.instance_states(sweepy).items() if state == "running"]
    cluster.ec2.terminate_instances(InstanceIds=alive[:1])
    MissionModel(sweepy).update(actions=[MissionModel.launch_errors.set("spot: no capacity")])
    sweeps.append(SweepReport(**cluster.api.lambda_.invoke("sweeper", _scheduled(cluster)).payload))
    cluster.run_workers(sweepy)
    cluster.deliver_result_events()
    assert mission(cluster, sweepy)["status"] == "FAILED"

    # A lost worker with attempts left, and a claim lost between the cursor and its item: the
    # sweeper requeues the one, then (nothing leased any more) recreates the other.
    lost = submit(cluster, kmer_config("lost", "lost.fa", count=6))
    cluster.upload("lost.fa", SAMPLE)
    cluster.deliver_source_events()
    lose_a_worker(cluster, lost)
    get_context().store.transactions._advance_cursor(lost, 1)  # a worker died right after it
    cluster.run_workers(lost)
    cluster.deliver_result_events()
    for _ in range(2):  # the expired lease first; the lost claim once nothing else waits
        sweeper()
        cluster.run_workers(lost)
        cluster.deliver_result_events()
    assert mission(cluster, lost)["status"] == "SUCCEEDED"

    # A cancel, while a worker holds a lease: its instances are stopped and accounted; the
    # sweeper settles the lease and sends the email. And one of a mission still awaiting its
    # input, which nothing can hold up: its email goes out at once.
    cancelled = submit(cluster, kmer_config("cancel", "cancel.fa"))
    cluster.upload("cancel.fa", SAMPLE)
    cluster.deliver_source_events()
    claim(cancelled, "i-cancelled/0", time.time(), 300)
    assert cluster.api.http.delete(f"/missions/{cancelled}").status_code == 200
    early = submit(cluster, kmer_config("cancel early", "cancel-early.fa"))
    assert cluster.api.http.delete(f"/missions/{early}").status_code == 200

    # The events of a finished mission lost (in the DLQ): the sweeper counts its outcomes from
    # the transactions and settles it.
    unsettled = submit(cluster, kmer_config("dlq", "dlq.fa", count=2))
    cluster.upload("dlq.fa", SAMPLE)
    cluster.deliver_source_events()
    cluster.run_workers(unsettled)
    cluster.sqs.purge_queue(QueueUrl=cluster.stack.result_queue_url)
    sweeper()
    assert sweeps[-1].recounted == 2 and sweeps[-1].settled == [unsettled], sweeps[-1]

    # A planner that died: its start request is sent again.
    stuck = submit(cluster, kmer_config("stuck", "stuck.fa"))
    MissionModel(stuck).update(
        actions=[
            MissionModel.status.set("PLANNING"),
            MissionModel.planning_lease_until.set(time.time() - 1),
        ]
    )
    sweeper()
    assert stuck in sweeps[-1].replanned, sweeps[-1]

    # Stages: a pipeline whose first stage has a reduce (run on a worker of its own, over the
    # merged parts) and feeds a second stage; the pipeline read, its email sent once; and a
    # pipeline cancelled while its first stage waits for its upload.
    reduce = {"app": {"builtin": "kmer-top", "params": {"top": 3}}, "instances": {"slots": 1}}
    first = {**kmer_config("first", "staged.fa", count=2, reduce=reduce), "notify": None}
    second = {
        **kmer_config("second", "unused", input={"stage": "first"}),
        "notify": None,
        "split": {"mode": "lines", "lines_per_transaction": 2},
        "app": {"builtin": "seq-stats"},
    }
    staged_body = {
        "name": "staged",
        "notify": "owner@example.org",
        "budget_usd": 100,
        "stages": [{"stage": "first", "config": first}, {"stage": "second", "config": second}],
    }
    staged = json.loads(
        cluster.api.http.post("/pipelines", headers=JSON, body=json.dumps(staged_body)).body
    )
    first_id, second_id = (s["mission_id"] for s in staged["stages"])
    cluster.upload("staged.fa", SAMPLE)
    cluster.deliver_source_events()
    cluster.run_workers(first_id)
    cluster.deliver_result_events()  # merged: REDUCING, its reduce stage created
    sweeper()  # budget kept; the reduce stage asked to start again (harmless)
    cluster.deliver_source_events()
    cluster.run_workers(f"{first_id}-reduce")
    cluster.deliver_result_events()
    cluster.deliver_source_events()  # the first stage's end starts the second
    cluster.run_workers(second_id)
    cluster.deliver_result_events()
    staged_view = json.loads(cluster.get(f"/pipelines/{staged['pipeline_id']}").body)
    assert staged_view["status"] == "SUCCEEDED", [
        (s["status"], s["error"]) for s in staged_view["stages"]
    ]
    other = {**staged_body, "stages": [{"stage": "first", "config": {**first, "input": "o.fa"}}]}
    other = json.loads(
        cluster.api.http.post("/pipelines", headers=JSON, body=json.dumps(other)).body
    )
    assert cluster.api.http.delete(f"/pipelines/{other['pipeline_id']}").status_code == 200
    # A mission cancelled while it reduces: its reduce stage is cancelled with it.
    reducing = submit(cluster, kmer_config("reducing", "reducing.fa", count=2, reduce=reduce))
    cluster.upload("reducing.fa", SAMPLE)
    cluster.deliver_source_events()
    cluster.run_workers(reducing)
    cluster.deliver_result_events()
    cluster.deliver_source_events()  # its reduce stage planned and launched
    assert mission(cluster, reducing)["status"] == "REDUCING"
    assert cluster.api.http.delete(f"/missions/{reducing}").status_code == 200
    assert mission(cluster, f"{reducing}-reduce")["status"] == "CANCELLED"
    # A downstream mission of a mission that failed: it fails too, saying why.
    after_bad = submit_fed(cluster, kmer_config("after bad", "unused", input={"mission": bad}))
    cluster.deliver_source_events()
    assert mission(cluster, after_bad)["status"] == "FAILED"

    # An hour later: a deadline passed, an input that never came, planning that never ended.
    never = submit(cluster, kmer_config("never", "never.fa", timeouts=deadline))
    sweeper(dataclasses.replace(get_context(), clock=lambda: time.time() + 7200))
    timed_out = set(sweeps[-1].timed_out)
    assert {spot, never, stuck} <= timed_out, sweeps[-1]
    cluster.deliver_result_events()

    # A budget reached: the mission fails, its instances are stopped.
    capped = submit(cluster, kmer_config("capped", "capped.fa", budget_usd=0.01))
    cluster.upload("capped.fa", SAMPLE)
    cluster.deliver_source_events()
    sweeper(dataclasses.replace(get_context(), clock=lambda: time.time() + 9000))
    assert sweeps[-1].over_budget == [capped], sweeps[-1]

    _merges_longer_than_an_invocation(cluster, recorder, sweeper)
    return sweeps


def _reported_but_still_running(recorder: Recorder, mission_id: str) -> str:
    """An instance of the mission whose agent reported its usage as it exits, and which
    DescribeInstances still shows as running at the merge (it is eventually consistent): the
    merge's receipt reads which instances are accounted, the end tries to account it again
    and is refused. Returns its id."""
    ctx = get_context()
    template = ctx.settings.launch_template
    launched = ctx.aws.ec2.run_instances(
        LaunchTemplate={launch_template_key(template): template},
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": worker_tags(ctx.settings, mission_id)}
        ],
    )
    instance_id = launched["Instances"][0]["InstanceId"]
    with recorder.acting_as("worker"):
        assert ctx.store.missions.add_instance_usage(mission_id, instance_id, Usage(2.0, 0.0001))
    return instance_id


def submit_fed(cluster: InProcessCluster, config: dict) -> str:
    """A mission fed by another's result (no upload)."""
    response = cluster.api.http.post("/missions", headers=JSON, body=json.dumps(config))
    assert response.status_code == 201, response.body
    return json.loads(response.body)["mission_id"]


MIB = 1024**2


def _cancel_while_running(cluster: InProcessCluster, recorder: Recorder) -> None:
    """The workers run in a thread of their own; the recorder's principal is one for the whole
    process, so what the test does meanwhile is done as nobody (not recorded), and the cancel
    through the API's own function rather than a request (the API's cancel is a scenario above):
    a call of the workers' is never taken for the API's."""
    saved = os.environ.get("LEASE_SECONDS")
    os.environ["LEASE_SECONDS"] = "6"
    reset_process_state()
    try:
        argv = ["{python}", "-c", SLOW, "{output}", "30"]
        config = kmer_config("cancel running", "running.fa", count=2, app={"argv": argv})
        config["instances"] = {"max_instances": 1, "slots": 2}
        running = submit(cluster, config)
        cluster.upload("running.fa", SAMPLE)
        cluster.deliver_source_events()
        workers = threading.Thread(target=cluster.run_workers, args=(running,))
        workers.start()
        try:
            deadline = time.monotonic() + 30
            while True:
                with recorder.acting_as(None):
                    leased = get_context().store.transactions.leased(running)
                if sum(t.span for t in leased) >= 2:
                    break
                assert time.monotonic() < deadline, "the apps never started"
                time.sleep(0.2)
            with recorder.acting_as(None):
                missions_api.cancel(get_context(), running, caller_of(LOCAL_CALLER, "local", []))
        finally:
            workers.join()
        assert mission(cluster, running)["transactions"]["CANCELLED"] == 2
    finally:
        if saved is None:
            os.environ.pop("LEASE_SECONDS", None)
        else:
            os.environ["LEASE_SECONDS"] = saved
        reset_process_state()


class Invocation:
    """Seconds left in a make-believe invocation, `step` fewer at every look; at look `at`,
    `then()` runs (as the test itself)."""

    def __init__(self, recorder: Recorder, start: float, step: float, at: int = 0, then=None):
        self.left, self.step, self.looks = start, step, 0
        self.recorder, self.at, self.then = recorder, at, then

    def __call__(self) -> float:
        self.looks += 1
        if self.then is not None and self.looks == self.at:
            with self.recorder.acting_as(None):
                self.then()
        self.left -= self.step
        return self.left


def _merged_part(i: int) -> bytes:
    """Small parts, one of 6 MiB in one PUT (S3 holds its sha256: checked unread, topped up by
    a ranged read) and one of 9 MiB in several (read to be hashed, then copied by S3)."""
    size = {2: 6 * MIB, 10: 9 * MIB}.get(i, 20_000)
    return bytes([65 + i % 26]) * size


def _merges_longer_than_an_invocation(
    cluster: InProcessCluster, recorder: Recorder, sweeper: Any
) -> None:
    """Merges staged as a mission's end (every outcome counted; no workers), each longer than
    an invocation: result_processor stops in time and continues through its queue, one
    invocation loses its lease midway, a cancel ends one mid-merge (cleaned up), and the
    sweeper starts one whose completing event was lost and, its continuation lost too, ends it
    (a stray upload of the result aborted)."""
    ctx = get_context()
    queue = cluster.stack.result_queue_url

    def continuation(mission_id: str, invocation: Invocation) -> None:
        get_context().aws.queue_urls.clear()
        sliced = dataclasses.replace(get_context(), time_left=invocation)
        with recorder.acting_as("result_processor"):
            handle_result_object(sliced, MergeRequest(mission_id))

    def merge_state(mission_id: str) -> dict:
        return json.loads(MissionModel.get(mission_id).merge_checkpoint or "{}")

    def drop_queued() -> None:  # lost events (PurgeQueue: once a minute)
        while messages := cluster.sqs.receive_message(
            QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=0
        ).get("Messages"):
            for m in messages:
                cluster.sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])

    with recorder.acting_as(None):
        resumed = stage_mission(ctx, 16, _merged_part)
        ended = stage_mission(ctx, 16, _merged_part)
        drop_queued()  # the staged parts' events: counted already

    # Out of time after a few parts (an upload begun, a part of it up): a checkpoint, and a
    # continuation asked for. The next invocation loses its lease to another: it stops.
    continuation(resumed, Invocation(recorder, 6, 0.25))
    assert 0 < merge_state(resumed)["next_index"] < 16 and merge_state(resumed)["upload_id"]

    def steal() -> None:
        MissionModel(resumed).update(actions=[MissionModel.merge_owner.set("another")])

    continuation(resumed, Invocation(recorder, 60, 0.5, at=4, then=steal))
    MissionModel(resumed).update(
        actions=[MissionModel.merge_owner.remove(), MissionModel.merge_lease_until.remove()]
    )
    cluster.deliver_result_events()  # the continuation: merged, mailed
    assert ctx.store.missions.get(resumed).status.value == "SUCCEEDED"
    assert merge_state(resumed)["phase"] == "done"

    continuation(ended, Invocation(recorder, 6, 0.25))
    assert merge_state(ended)["upload_id"]
    assert cluster.api.http.delete(f"/missions/{ended}").status_code == 200
    cluster.deliver_result_events()  # the continuation finds it cancelled: cleaned up
    assert merge_state(ended) == {}

    with recorder.acting_as(None):
        swept = stage_mission(ctx, 40, lambda i: b"%d\n" % i)
        drop_queued()  # its completing event lost
    get_context().aws.queue_urls.clear()
    with recorder.acting_as("sweeper"):
        report = sweep(dataclasses.replace(get_context(), time_left=Invocation(recorder, 6, 0.25)))
    assert 0 < merge_state(swept)["next_index"] < 40 and merge_state(swept)["tail"]
    # A merge under way goes on through its own requests: the sweep reports no error for it.
    assert report.errors == {}
    with recorder.acting_as(None):
        drop_queued()  # its continuation lost as well
        bucket = cluster.stack.outputs["ResultBucketName"]
        cluster.s3.create_multipart_upload(Bucket=bucket, Key=result_key(swept))  # a stray
    sweeper()
    assert ctx.store.missions.get(swept).status.value == "SUCCEEDED"
    listed = cluster.s3.list_multipart_uploads(Bucket=bucket, Prefix=result_key(swept))
    assert not listed.get("Uploads")


# Where the principals' code paths live: every function here must run in the scenarios, so a new
# store method or handler branch cannot reach AWS without its IAM calls being checked.
COVERED_MODULES = (
    "app.py",
    "chalicelib/store/missions.py",
    "chalicelib/store/transactions.py",
    "chalicelib/scheduler.py",
    "chalicelib/sweeper.py",
    "chalicelib/results.py",
    "chalicelib/merge.py",
    "chalicelib/interruptions.py",
    "chalicelib/missions.py",
    "chalicelib/capacity.py",
    "worker_ami/agent.py",
)
ROOT = Path(__file__).resolve().parents[2]


def defined_functions() -> set[str]:
    """`path:function` for every function and method the covered modules define."""
    found = set()
    for module in COVERED_MODULES:
        tree = ast.parse((ROOT / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.add(f"{module}:{node.name}")
    return found


@contextmanager
def calls_recorded() -> Iterator[set[str]]:
    """`path:function` of every covered function called meanwhile, in any thread."""
    files = {str(ROOT / m): m for m in COVERED_MODULES}
    called: set[str] = set()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and (module := files.get(frame.f_code.co_filename)):
            called.add(f"{module}:{frame.f_code.co_name}")

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        yield called
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]


# Never run in the scenarios, and why that is fine for the IAM check.
NOT_IN_SCENARIOS = {
    "app.py:answers",  # run when app.py is imported, decorating the routes
    "app.py:decorate",
    "worker_ami/agent.py:main",  # the worker's process entry: the scenarios run agents in threads
    "worker_ami/agent.py:_watch_for_interruption",  # polls metadata only: no AWS call
    # WorkerClients' declarations (a Protocol): AwsClients' own properties are what runs.
    "worker_ami/agent.py:s3",
    "worker_ami/agent.py:ec2",
}


def _allows(
    statement: dict[str, Any], action: str, resource: str, attributes: frozenset[str] = frozenset()
) -> bool:
    if action not in statement["Action"]:
        return False
    # ForAllValues: every attribute the request names must be on the statement's list.
    listed = statement.get("Condition", {}).get("ForAllValues:StringEquals", {})
    if "dynamodb:Attributes" in listed and not attributes <= set(listed["dynamodb:Attributes"]):
        return False
    # "*": an action that takes no resource ARN (Describe*), or one we do not model here.
    return resource == "*" or any(fnmatch.fnmatchcase(resource, r) for r in statement["Resource"])


def test_every_call_is_allowed_and_every_grant_is_used(recorded):
    cluster, recorder = recorded
    with calls_recorded() as called:
        sweeps = run_scenarios(cluster, recorder)
    never = sorted(defined_functions() - called - NOT_IN_SCENARIOS)
    assert not never, f"never run by the scenarios (extend them): {never}"
    repairs = {k for report in sweeps for k, v in dataclasses.asdict(report).items() if v}
    kinds = {f.name for f in dataclasses.fields(SweepReport)} - {"errors"}
    assert repairs == kinds, repairs
    policies = {
        name: resolved(function_statements(name), cluster.stack) for name in FUNCTION_POLICY_FILES
    }
    policies["worker"] = resolved(worker_statements(), cluster.stack)
    assert set(recorder.calls) == set(policies), "a principal never ran: extend the scenarios"

    denied = {
        principal: sorted(
            (action, resource, *sorted(names))
            for action, resource, names in calls
            if not any(_allows(s, action, resource, names) for s in policies[principal])
        )
        for principal, calls in recorder.named.items()
    }
    assert not any(denied.values()), "denied: " + json.dumps(denied, indent=1)

    unused = {
        principal: sorted(
            {
                action
                for s in statements
                if not s.get("Sid", "").startswith(SERVICE_SID_PREFIX)
                for action in s["Action"]
            }
            - {action for action, _ in recorder.calls[principal]}
        )
        for principal, statements in policies.items()
    }
    assert not any(unused.values()), "granted, never used: " + json.dumps(unused, indent=1)


def test_an_attribute_off_the_list_is_denied():
    """The attribute check above can fail: the worker's UpdateItem on a transaction is allowed
    with the attributes it writes, and denied once it names `counted` (result_processor's)."""
    (statement,) = [s for s in worker_statements() if s["Sid"] == "ClaimLeaseAndFinishTransactions"]
    statement = {**statement, "Action": [statement["Action"]], "Resource": ["*"]}
    claim = frozenset({"mission_id", "index", "status", "lease_owner", "claims"})
    assert _allows(statement, "dynamodb:UpdateItem", "*", claim)
    assert not _allows(statement, "dynamodb:UpdateItem", "*", claim | {"counted"})
