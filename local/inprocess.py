"""A whole lighthpc in one process on moto: the API through `chalice.test.Client`, the queued S3
events delivered to the very handlers app.py registers, a worker agent per EC2 instance the
scheduler launched, and the completion email read back from SNS (through an SQS subscription).

Used by the functional tests and by `lighthpc demo --in-process`: `InProcessCluster.running()`
enters `embedded_aws(server=False)` and builds the cluster on it.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from chalice.local import LambdaContext
from chalice.test import Client, InvokeResponse, TestLambdaClient

from chalicelib.capacity import mission_instances
from chalicelib.context import get_context
from local.embedded import embedded_aws
from local.faults import on_every_client
from local.outbox import Email, Outbox
from local.pump import Queue
from local.stack import Stack
from worker_ami.agent import AgentReport, WorkerAgent
from worker_ami.metadata import InstanceIdentity, StaticMetadata

APP_DIR = Path(__file__).resolve().parent.parent
__all__ = ["ApiCallCounter", "Email", "InProcessCluster"]


class _TimedLambdaClient(TestLambdaClient):
    """Chalice's test Lambda client, but each invocation gets its function's configured
    timeout (.chalice/config.json), as in Lambda, not LambdaContext's default 3 s: work that
    budgets by the time left (the merge, chalicelib.merge) sees what it would there."""

    def invoke(self, function_name: str, payload: Any = None) -> Any:
        scoped = self._config.scope(self._config.chalice_stage, function_name)
        context = LambdaContext(
            function_name,
            memory_size=scoped.lambda_memory_size,
            max_runtime_ms=scoped.lambda_timeout * 1000,
        )
        with self._patched_env_vars(scoped.environment_variables):
            response = self._app.handler_map[function_name](payload or {}, context)
        return InvokeResponse(payload=response)


class ApiCallCounter:
    """Counts AWS API calls made by every botocore client, through a `before-call` hook."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, model: Any = None, **_: Any) -> None:
        with self._lock:
            self.calls.append(f"{model.service_model.service_name}.{model.name}")

    @contextmanager
    def installed(self) -> Iterator[ApiCallCounter]:
        with on_every_client("before-call.*.*", self):
            yield self

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()


class InProcessCluster:
    def __init__(self, stack: Stack, workdir: Path | None = None) -> None:
        self.stack = stack
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="lighthpc-inprocess-"))
        # Chalice's local gateway admits IAMAuthorizer routes and warns on every request; here
        # app.py checks the caller itself (chalicelib.auth), so the warning is noise.
        warnings.filterwarnings(
            "ignore",
            message="IAMAuthorizer is not a supported in local mode",
            module=r"chalice\.local",
        )
        self.api = Client(_chalice_app(), stage_name=stack.stage, project_dir=str(APP_DIR))
        self.api._lambda_client = _TimedLambdaClient(self.api._app, self.api._chalice_config)
        session = boto3.Session(region_name=stack.region)
        self.s3 = session.client("s3")
        self.sqs = session.client("sqs")
        self.ec2 = session.client("ec2")
        self._outbox = Outbox(
            session.client("sns"),
            self.sqs,
            stack.outputs["TopicArn"],
            f"lighthpc-{stack.stage}-outbox",
        )
        self._metadata: dict[str, StaticMetadata] = {}
        self.handler_errors: list[BaseException] = []

    @classmethod
    @contextmanager
    def running(
        cls, stage: str = "local", workdir: Path | None = None, env: dict[str, str] | None = None
    ) -> Iterator[InProcessCluster]:
        """moto's in-process mock, the stack provisioned (`env` set on top), a cluster on it."""
        with embedded_aws(server=False, stage=stage, env=env) as aws:
            yield cls(aws.stack, workdir)

    # ---- what a user does -------------------------------------------------------------

    def submit(self, config: dict[str, Any], path: str = "/missions") -> Any:
        return self.api.http.post(
            path, headers={"Content-Type": "application/json"}, body=json.dumps(config)
        )

    def get(self, path: str) -> Any:
        return self.api.http.get(path)

    def upload(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.stack.outputs["SourceBucketName"], Key=key, Body=body)

    # ---- what AWS does ----------------------------------------------------------------

    def deliver_source_events(self, times: int = 1) -> int:
        return self._deliver(self.stack.source_queue_url, "light_scheduler", times)

    def deliver_result_events(self, times: int = 1) -> int:
        return self._deliver(self.stack.result_queue_url, "result_processor", times)

    def _deliver(self, queue_url: str, function: str, times: int) -> int:
        """Hand every queued message to the handler (`times` each), as Lambda's poller would.

        A handler error leaves the batch on the queue, to be delivered again, as Lambda's poller
        does (after a pause: on AWS, the queue's visibility timeout; here a short backoff, so a
        throttled hot item has refilled); the error is kept in `handler_errors`. A batch that
        keeps failing raises.
        """
        queue = Queue.at(self.sqs, queue_url, self.stack.region)

        def invoke(event: dict[str, Any]) -> None:
            for _ in range(times):
                self.api.lambda_.invoke(function, event)

        delivered = failures = 0
        while True:
            try:
                batch = queue.deliver_batch(invoke, visibility_timeout=0)
            except Exception as e:
                self.handler_errors.append(e)
                failures += 1
                if failures >= 5:
                    raise
                time.sleep(0.25 * 2**failures)
                continue
            if not batch:
                return delivered
            delivered += batch

    def run_workers(self, mission_id: str, python: str | None = None) -> list[AgentReport]:
        """One worker agent per running instance of the mission, concurrently, like a fleet."""
        instances = mission_instances(self.ec2, mission_id, ["pending", "running"])
        agents = []
        for instance in instances:
            metadata = self._metadata[instance["InstanceId"]] = instance_metadata(instance)
            workdir = self.workdir / instance["InstanceId"]
            agents.append(agent_for(instance, workdir, python=python, metadata=metadata))
        reports: list[AgentReport] = []
        errors: list[BaseException] = []

        def run(agent: WorkerAgent) -> None:
            try:
                reports.append(agent.run())
            except BaseException as e:  # surfaced below, in the caller's thread
                errors.append(e)

        threads = [threading.Thread(target=run, args=(a,)) for a in agents]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return reports

    def spot_notice_all(self, notice: dict[str, str]) -> None:
        """Post a Spot interruption notice in the metadata of every agent run so far."""
        for metadata in self._metadata.values():
            metadata.interruption = notice

    @contextmanager
    def crash_once(self, function: str, after_records: int) -> Iterator[None]:
        """Make a handler crash once, right after it has fully handled `after_records` events
        (its side effects done, the batch not yet acknowledged)."""
        import app as app_module

        names = {
            "light_scheduler": "handle_source_event",
            "result_processor": "handle_result_object",
        }
        name = names[function]
        original = getattr(app_module, name)
        seen = {"records": 0, "crashed": False}

        def crashing(ctx: Any, event: Any) -> None:
            original(ctx, event)
            seen["records"] += 1
            crash_if_due()

        def crash_if_due() -> None:
            if not seen["crashed"] and seen["records"] >= after_records:
                seen["crashed"] = True
                raise RuntimeError(f"chaos: {function} crashed after {after_records} record(s)")

        patched = {name: crashing}
        if function == "result_processor":
            # Outcomes counted together for their batch (`count_batch`) are done there, not
            # one by one: those count as handled records too.
            count_batch = app_module.count_batch

            def counting_then_crashing(ctx: Any, items: Any) -> Any:
                done = count_batch(ctx, items)
                seen["records"] += len(done)
                crash_if_due()
                return done

            patched["count_batch"] = counting_then_crashing
        originals = {n: getattr(app_module, n) for n in patched}
        for n, f in patched.items():
            setattr(app_module, n, f)
        try:
            yield
        finally:
            for n, f in originals.items():
                setattr(app_module, n, f)
        assert seen["crashed"], "the crash was never triggered"

    def instances(self, mission_id: str) -> list[dict[str, Any]]:
        """The mission's instances as EC2 describes them, in any state."""
        states = ["pending", "running", "shutting-down", "terminated", "stopping", "stopped"]
        return mission_instances(self.ec2, mission_id, states)

    def instance_states(self, mission_id: str) -> dict[str, str]:
        return {i["InstanceId"]: i["State"]["Name"] for i in self.instances(mission_id)}

    # ---- what the owner receives ------------------------------------------------------

    def emails(self) -> list[Email]:
        """Every completion message published so far (drains the outbox subscription)."""
        return self._outbox.drain()

    def result(self, uri: str) -> bytes:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def instance_metadata(instance: dict[str, Any], **notices: Any) -> StaticMetadata:
    """What IMDS would tell the worker on a described EC2 instance (tags, type, market)."""
    identity = InstanceIdentity(
        instance["InstanceId"],
        {t["Key"]: t["Value"] for t in instance.get("Tags", [])},
        instance_type=instance.get("InstanceType"),
        market=instance.get("InstanceLifecycle") or "on-demand",
    )
    return StaticMetadata(identity, **notices)


def agent_for(
    instance: dict[str, Any],
    workdir: Path,
    python: str | None = None,
    metadata: StaticMetadata | None = None,
) -> WorkerAgent:
    """The worker agent of one described EC2 instance, in this process, with its store and
    clients from this process's context."""
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = get_context()
    return WorkerAgent(
        settings=ctx.settings,
        store=ctx.store,
        aws=ctx.aws,
        metadata=metadata or instance_metadata(instance),
        workdir=workdir,
        **({"python": python} if python else {}),
    )


def _chalice_app() -> Any:
    import app  # the very app that Lambda runs

    return app.app
