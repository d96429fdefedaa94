"""A whole lighthpc in one process on moto: the API through `chalice.test.Client`, the queued S3
events delivered to the very handlers app.py registers, a worker agent per EC2 instance the
scheduler launched, and the completion email read back from SNS (through an SQS subscription).

Used by the functional tests and by `lighthpc demo --in-process`. It must run inside `mock_aws()`.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from chalice.test import Client

from chalicelib.capacity import mission_instances
from chalicelib.context import get_context, reset_process_state
from chalicelib.settings import get_settings
from local.moto_patches import make_dynamodb_writes_atomic
from local.stack import Stack, provision
from worker_ami.agent import AgentReport, WorkerAgent
from worker_ami.metadata import InstanceIdentity, StaticMetadata

APP_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Email:
    subject: str
    body: str
    attributes: dict[str, str]


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
        original = botocore.session.Session.create_client
        counter = self

        def create_client(session: Any, *args: Any, **kwargs: Any) -> Any:
            client = original(session, *args, **kwargs)
            client.meta.events.register("before-call.*.*", counter)
            return client

        botocore.session.Session.create_client = create_client  # type: ignore[method-assign]
        try:
            yield self
        finally:
            botocore.session.Session.create_client = original  # type: ignore[method-assign]

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
        session = boto3.Session(region_name=stack.region)
        self.s3 = session.client("s3")
        self.sqs = session.client("sqs")
        self.ec2 = session.client("ec2")
        self._outbox = self._subscribe_outbox(session)
        self._metadata: dict[str, StaticMetadata] = {}
        self.handler_errors: list[BaseException] = []

    @classmethod
    def start(cls, stage: str = "local", workdir: Path | None = None) -> InProcessCluster:
        """Provision the stack in the current moto and point this process's settings at it."""
        make_dynamodb_writes_atomic()
        stack = provision(boto3.Session(), stage=stage)
        os.environ.update(stack.environment())
        reset_process_state()
        return cls(stack, workdir)

    # ---- what a user does -------------------------------------------------------------

    def submit(self, config: dict[str, Any]) -> Any:
        return self.api.http.post(
            "/missions",
            headers={"Content-Type": "application/json"},
            body=json.dumps(config),
        )

    def get(self, path: str) -> Any:
        return self.api.http.get(path)

    def upload(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=get_settings().source_bucket, Key=key, Body=body)

    # ---- what AWS does ----------------------------------------------------------------

    def deliver_source_events(self, times: int = 1) -> int:
        return self._deliver(self.stack.source_queue_url, "light_scheduler", times)

    def deliver_result_events(self, times: int = 1) -> int:
        return self._deliver(self.stack.result_queue_url, "result_processor", times)

    def _deliver(self, queue_url: str, function: str, times: int) -> int:
        """Hand every queued message to the handler (`times` each), as Lambda's poller would.

        A handler error leaves the batch on the queue, to be delivered again, as Lambda's poller
        does; the error is kept in `handler_errors`. A batch that keeps failing raises.
        """
        delivered = 0
        failures = 0
        while True:
            messages = self.sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0
            ).get("Messages", [])
            if not messages:
                return delivered
            event = self.api.events.generate_sqs_event(
                message_bodies=[m["Body"] for m in messages],
                queue_name=queue_url.rsplit("/", 1)[-1],
            )
            try:
                for _ in range(times):
                    self.api.lambda_.invoke(function, event)
            except Exception as e:
                self.handler_errors.append(e)
                failures += 1
                if failures >= 5:
                    raise
                continue
            self.sqs.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )
            delivered += len(messages)

    def run_workers(self, mission_id: str, python: str | None = None) -> list[AgentReport]:
        """One worker agent per running instance of the mission, concurrently, like a fleet."""
        instances = mission_instances(self.ec2, mission_id, ["pending", "running"])
        reports: list[AgentReport] = []
        errors: list[BaseException] = []

        def run(instance: dict[str, Any]) -> None:
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
            workdir = self.workdir / instance["InstanceId"]
            workdir.mkdir(parents=True, exist_ok=True)
            extra = {"python": python} if python else {}
            identity = InstanceIdentity(
                instance["InstanceId"],
                tags,
                instance_type=instance.get("InstanceType"),
                market=instance.get("InstanceLifecycle") or "on-demand",
            )
            metadata = StaticMetadata(identity)
            self._metadata[instance["InstanceId"]] = metadata
            agent = WorkerAgent(
                settings=get_settings(),
                store=get_context().store,
                s3=get_context().aws.s3,
                ec2=get_context().aws.ec2,
                metadata=metadata,
                workdir=workdir,
                **extra,
            )
            try:
                reports.append(agent.run())
            except BaseException as e:  # surfaced below, in the caller's thread
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in instances]
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
            if not seen["crashed"] and seen["records"] == after_records:
                seen["crashed"] = True
                raise RuntimeError(f"chaos: {function} crashed after {after_records} record(s)")

        setattr(app_module, name, crashing)
        try:
            yield
        finally:
            setattr(app_module, name, original)
        assert seen["crashed"], "the crash was never triggered"

    def instance_states(self, mission_id: str) -> dict[str, str]:
        states = ["pending", "running", "shutting-down", "terminated", "stopping", "stopped"]
        return {
            i["InstanceId"]: i["State"]["Name"]
            for i in mission_instances(self.ec2, mission_id, states)
        }

    # ---- what the owner receives ------------------------------------------------------

    def _subscribe_outbox(self, session: Any) -> str:
        sns = session.client("sns")
        queue_url = self.sqs.create_queue(QueueName=f"lighthpc-{self.stack.stage}-outbox")[
            "QueueUrl"
        ]
        arn = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        sns.subscribe(TopicArn=self.stack.outputs["TopicArn"], Protocol="sqs", Endpoint=arn)
        return queue_url

    def emails(self) -> list[Email]:
        """Every completion message published so far (drains the outbox subscription)."""
        found: list[Email] = []
        while True:
            messages = self.sqs.receive_message(QueueUrl=self._outbox, MaxNumberOfMessages=10).get(
                "Messages", []
            )
            if not messages:
                return found
            for m in messages:
                envelope = json.loads(m["Body"])
                attributes = {
                    k: v.get("Value", "") for k, v in envelope.get("MessageAttributes", {}).items()
                }
                found.append(Email(envelope.get("Subject", ""), envelope["Message"], attributes))
                self.sqs.delete_message(QueueUrl=self._outbox, ReceiptHandle=m["ReceiptHandle"])

    def result(self, uri: str) -> bytes:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def _chalice_app() -> Any:
    import app  # the very app that Lambda runs

    return app.app
