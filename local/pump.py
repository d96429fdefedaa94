"""The event pump: Lambda's SQS poller, played locally, and the outbox of completion emails.

For every `on_sqs_message` handler that app.py registers, a thread long-polls its queue on the
embedded AWS, builds the event Lambda would send (the same record shape), calls the very handler
object Lambda calls, and deletes the batch only if the handler returned. A handler error leaves
the batch on the queue, to come back after the visibility timeout and, after the queue's
`maxReceiveCount`, to go to its dead-letter queue, as in AWS.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any

from chalice.app import CloudWatchEventConfig, ScheduledEventConfig, SQSEventConfig

from chalicelib.observability import logger
from local.chaos import Chaos

# A failed batch comes back this soon locally (AWS uses the queue's visibility timeout).
RETRY_VISIBILITY_SECONDS = 5
ACCOUNT_ID = "123456789012"  # moto's


@dataclass
class LambdaContext:
    """The parts of Lambda's context object that handlers and Powertools read."""

    function_name: str
    aws_request_id: str = ""
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = ""
    log_group_name: str = ""
    log_stream_name: str = ""

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def sqs_lambda_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict:
    """The event Lambda's SQS integration sends, from ReceiveMessage's messages."""
    records = []
    for m in messages:
        attributes = m.get("Attributes", {})
        records.append(
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {
                    "ApproximateReceiveCount": attributes.get("ApproximateReceiveCount", "1"),
                    "SentTimestamp": attributes.get("SentTimestamp", str(int(time.time() * 1000))),
                    "SenderId": attributes.get("SenderId", "AIDAIENQZJOLO23YVJ4VO"),
                    "ApproximateFirstReceiveTimestamp": attributes.get(
                        "ApproximateFirstReceiveTimestamp", str(int(time.time() * 1000))
                    ),
                },
                "messageAttributes": {},
                "md5OfBody": m.get("MD5OfBody") or hashlib.md5(m["Body"].encode()).hexdigest(),  # noqa: S324
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
        )
    return {"Records": records}


class QueuePoller:
    """One queue, one handler: receive, invoke, delete on success."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        handler: Callable[[dict, Any], Any],
        name: str,
        region: str,
        batch_size: int = 10,
        chaos: Chaos | None = None,
    ) -> None:
        self._chaos = chaos
        self._sqs = sqs
        self._url = queue_url
        self._handler = handler
        self.name = name
        self._region = region
        self._batch_size = min(batch_size, 10)
        self._arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        self.delivered = 0
        self.failed_batches = 0

    def poll_once(self, wait_seconds: int = 1) -> int:
        messages = self._sqs.receive_message(
            QueueUrl=self._url,
            MaxNumberOfMessages=self._batch_size,
            WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=RETRY_VISIBILITY_SECONDS,
            AttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return 0
        try:
            self._invoke(messages)
        except Exception as e:
            self.failed_batches += 1
            logger.warning(
                "handler failed; the batch returns to the queue",
                extra={"function": self.name, "error": repr(e)},
            )
            return 0
        self._sqs.delete_message_batch(
            QueueUrl=self._url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )
        self.delivered += len(messages)
        return len(messages)

    def _invoke(self, messages: list[dict[str, Any]]) -> None:
        chaos = self._chaos
        if chaos is None:
            self._call(messages)
            return
        delay = chaos.delay()
        if delay:
            chaos.ledger.add(delayed_batches=1)
            time.sleep(delay)
        chaos.shuffle(messages)
        if chaos.should_crash(self.name):
            # Crash mid-way: the first half of the batch is handled (its side effects happen),
            # then the invocation dies and the whole batch comes back.
            chaos.ledger.add(handler_crashes=1)
            self._call(messages[: max(1, len(messages) // 2)])
            raise RuntimeError(f"chaos: {self.name} crashed mid-batch")
        for n in range(chaos.options.duplicate):
            self._call(messages)
            if n:
                chaos.ledger.add(duplicate_deliveries=len(messages))

    def _call(self, messages: list[dict[str, Any]]) -> None:
        event = sqs_lambda_event(messages, self._arn, self._region)
        self._handler(event, LambdaContext(self.name, aws_request_id=str(uuid.uuid4())))


def _handler_of(app_module: Any, source: Any) -> Callable[[dict, Any], Any]:
    return getattr(app_module, source.handler_string.split(".", 1)[1])


def sqs_pollers(
    app_module: Any, sqs: Any, region: str, chaos: Chaos | None = None
) -> list[QueuePoller]:
    """A poller for each `on_sqs_message` handler that the Chalice app registered."""
    pollers = []
    for source in app_module.app.event_sources:
        if not isinstance(source, SQSEventConfig):
            continue
        url = sqs.get_queue_url(QueueName=source.queue)["QueueUrl"]
        pollers.append(
            QueuePoller(
                sqs,
                url,
                _handler_of(app_module, source),
                source.name,
                region,
                source.batch_size,
                chaos,
            )
        )
    return pollers


def _eventbridge_event(
    detail_type: str, source: str, detail: dict, resources: list[str], region: str
) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": detail_type,
        "source": source,
        "account": ACCOUNT_ID,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": region,
        "resources": resources,
        "detail": detail,
    }


class Schedule:
    """A Chalice `schedule` handler, invoked every `every_seconds` (AWS: its rate)."""

    def __init__(
        self, name: str, handler: Callable[[dict, Any], Any], every_seconds: float, region: str
    ) -> None:
        self.name = name
        self._handler = handler
        self._every = every_seconds
        self._region = region
        self._next = time.monotonic() + every_seconds
        self.runs = 0

    def poll_once(self, wait_seconds: int = 1) -> int:
        pause = self._next - time.monotonic()
        if pause > 0:
            time.sleep(min(pause, wait_seconds))
            return 0
        self._next = time.monotonic() + self._every
        event = _eventbridge_event(
            "Scheduled Event",
            "aws.events",
            {},
            [f"arn:aws:events:{self._region}:{ACCOUNT_ID}:rule/{self.name}"],
            self._region,
        )
        self._handler(event, LambdaContext(self.name, aws_request_id=str(uuid.uuid4())))
        self.runs += 1
        return 1


def schedules(app_module: Any, every_seconds: float, region: str) -> list[Schedule]:
    return [
        Schedule(source.name, _handler_of(app_module, source), every_seconds, region)
        for source in app_module.app.event_sources
        if isinstance(source, ScheduledEventConfig)
    ]


class EventBus:
    """EventBridge, locally: an event goes to every `on_cw_event` handler whose pattern matches
    (patterns here match on top-level fields, which is all app.py's patterns use)."""

    def __init__(self, app_module: Any, region: str, chaos: Chaos | None = None) -> None:
        self._region = region
        self._chaos = chaos
        self._rules = [
            (source.name, source.event_pattern, _handler_of(app_module, source))
            for source in app_module.app.event_sources
            if isinstance(source, CloudWatchEventConfig)
        ]

    def put(self, detail_type: str, source: str, detail: dict, resources: list[str]) -> int:
        event = _eventbridge_event(detail_type, source, detail, resources, self._region)
        copies = self._chaos.options.duplicate if self._chaos else 1
        delivered = 0
        for name, pattern, handler in self._rules:
            if all(event.get(key) in values for key, values in pattern.items()):
                for n in range(copies):
                    try:
                        handler(event, LambdaContext(name, aws_request_id=str(uuid.uuid4())))
                    except Exception as e:
                        logger.warning(
                            "event handler failed", extra={"handler": name, "error": repr(e)}
                        )
                    if n and self._chaos:
                        self._chaos.ledger.add(duplicate_deliveries=1)
                delivered += 1
        return delivered


class Outbox:
    """Completion emails: SNS -> an SQS subscription -> one .eml file each, printed."""

    def __init__(
        self,
        sns: Any,
        sqs: Any,
        topic_arn: str,
        folder: Path,
        queue_name: str,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._sqs = sqs
        self._echo = echo
        self._url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=self._url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn)

    def poll_once(self, wait_seconds: int = 1) -> int:
        messages = self._sqs.receive_message(
            QueueUrl=self._url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds
        ).get("Messages", [])
        for m in messages:
            path = self.write(json.loads(m["Body"]))
            self._echo(f"\n--- email written to {path} ---\n{path.read_text()}")
            self._sqs.delete_message(QueueUrl=self._url, ReceiptHandle=m["ReceiptHandle"])
        return len(messages)

    def write(self, envelope: dict[str, Any]) -> Path:
        attributes = {
            k: v.get("Value", "") for k, v in envelope.get("MessageAttributes", {}).items()
        }
        mail = EmailMessage()
        mail["From"] = "lighthpc <lighthpc@localhost>"
        mail["To"] = attributes.get("notify") or "owner@localhost"
        mail["Subject"] = envelope.get("Subject") or "lighthpc"
        mail["Date"] = formatdate(localtime=True)
        mail["X-Lighthpc-Mission"] = attributes.get("mission_id", "")
        mail["X-Lighthpc-Status"] = attributes.get("status", "")
        mail.set_content(envelope.get("Message", ""), cte="8bit")
        stamp = time.strftime("%Y%m%dT%H%M%S")
        name = f"{stamp}-{attributes.get('mission_id') or envelope.get('MessageId')}.eml"
        path = self.folder / name
        path.write_bytes(bytes(mail))
        return path


class PumpThread(threading.Thread):
    """Runs `poll_once` of each source in a loop until stopped."""

    def __init__(self, source: Any, halt: threading.Event) -> None:
        super().__init__(name=f"pump-{getattr(source, 'name', 'outbox')}", daemon=True)
        self._source = source
        self._halt = halt

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self._source.poll_once(wait_seconds=1)
            except Exception as e:
                logger.warning("pump error", extra={"error": repr(e)})
                self._halt.wait(1.0)
