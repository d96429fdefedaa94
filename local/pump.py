"""The event pump: Lambda's event sources, played locally, with Lambda's event shapes.

`Queue.deliver_batch` is Lambda's SQS poller, written once for every local runtime: receive a
batch, build the event Lambda would send, invoke the handler, delete the batch only if the
handler returned. A handler error leaves the batch on the queue, to come back after the
visibility timeout and, after the queue's `maxReceiveCount`, to go to its dead-letter queue, as
in AWS. `lighthpc up` polls every queue of an `on_sqs_message` handler with it (`QueuePoller`);
the in-process cluster and the benchmarks drain queues with it.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chalice.app import CloudWatchEventConfig, ScheduledEventConfig, SQSEventConfig
from chalice.local import LambdaContext

from chalicelib.observability import logger
from local.chaos import Chaos

# A failed batch comes back this soon locally (AWS uses the queue's visibility timeout).
RETRY_VISIBILITY_SECONDS = 5
ACCOUNT_ID = "123456789012"  # moto's
LAMBDA_TIMEOUT_MS = 60_000

Invoke = Callable[[dict[str, Any]], object]


def lambda_context(function_name: str) -> LambdaContext:
    """The context object Lambda passes (request id, memory, remaining time)."""
    return LambdaContext(function_name, memory_size=256, max_runtime_ms=LAMBDA_TIMEOUT_MS)


def sqs_lambda_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict:
    """The event Lambda's SQS integration sends, from ReceiveMessage's messages."""
    now_ms = str(int(time.time() * 1000))
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
                    "SentTimestamp": attributes.get("SentTimestamp", now_ms),
                    "SenderId": attributes.get("SenderId", "AIDAIENQZJOLO23YVJ4VO"),
                    "ApproximateFirstReceiveTimestamp": attributes.get(
                        "ApproximateFirstReceiveTimestamp", now_ms
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


@dataclass(frozen=True)
class Queue:
    sqs: Any
    url: str
    arn: str
    region: str

    @classmethod
    def at(cls, sqs: Any, url: str, region: str) -> Queue:
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return cls(sqs, url, attributes["Attributes"]["QueueArn"], region)

    def deliver_batch(
        self,
        invoke: Invoke,
        *,
        batch_size: int = 10,
        wait_seconds: int = 0,
        visibility_timeout: int | None = None,
    ) -> int:
        """One batch, as Lambda delivers it; returns its size (0: the queue was empty). A
        handler error propagates, and the batch stays on the queue."""
        receive: dict[str, Any] = {
            "QueueUrl": self.url,
            "MaxNumberOfMessages": min(batch_size, 10),
            "WaitTimeSeconds": wait_seconds,
            "AttributeNames": ["All"],
        }
        if visibility_timeout is not None:
            receive["VisibilityTimeout"] = visibility_timeout
        messages = self.sqs.receive_message(**receive).get("Messages", [])
        if not messages:
            return 0
        invoke(sqs_lambda_event(messages, self.arn, self.region))
        self.sqs.delete_message_batch(
            QueueUrl=self.url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )
        return len(messages)

    def drain(self, invoke: Invoke, **options: Any) -> int:
        """Deliver batches until the queue is empty; returns how many messages went."""
        delivered = 0
        while batch := self.deliver_batch(invoke, **options):
            delivered += batch
        return delivered


class QueuePoller:
    """One queue, one handler, for `lighthpc up`: long-poll, deliver (through chaos, if on).
    Several threads may poll with one poller, as Lambda invokes a handler concurrently."""

    def __init__(
        self,
        queue: Queue,
        handler: Callable[[dict, Any], Any],
        name: str,
        batch_size: int = 10,
        chaos: Chaos | None = None,
    ) -> None:
        self._queue = queue
        self._handler = handler
        self.name = name
        self._batch_size = batch_size
        self._chaos = chaos
        self.delivered = 0
        self.failed_batches = 0
        self._counts = threading.Lock()

    def poll_once(self, wait_seconds: int = 1) -> int:
        try:
            delivered = self._queue.deliver_batch(
                self._invoke,
                batch_size=self._batch_size,
                wait_seconds=wait_seconds,
                visibility_timeout=RETRY_VISIBILITY_SECONDS,
            )
        except Exception as e:
            with self._counts:
                self.failed_batches += 1
            logger.warning(
                "handler failed; the batch returns to the queue",
                extra={"function": self.name, "error": repr(e)},
            )
            return 0
        with self._counts:
            self.delivered += delivered
        return delivered

    def _invoke(self, event: dict[str, Any]) -> None:
        chaos = self._chaos
        if chaos is None:
            self._call(event)
            return
        records = event["Records"]
        delay = chaos.delay()
        if delay:
            chaos.ledger.add(delayed_batches=1)
            time.sleep(delay)
        chaos.shuffle(records)
        handled = chaos.crash_point(self.name, [r["body"] for r in records])
        if handled is not None:
            # Crash mid-way, on mission traffic: the records up to the crash point are handled
            # (their side effects happen), then the invocation dies and the whole batch comes
            # back. Chaos counts the crash in its ledger.
            self._call({"Records": records[:handled]})
            raise RuntimeError(f"chaos: {self.name} crashed mid-batch")
        for n in range(chaos.options.duplicate):
            self._call(event)
            if n:
                chaos.ledger.add(duplicate_deliveries=len(records))

    def _call(self, event: dict[str, Any]) -> None:
        self._handler(event, lambda_context(self.name))


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
        queue = Queue.at(sqs, url, region)
        pollers.append(
            QueuePoller(
                queue, _handler_of(app_module, source), source.name, source.batch_size, chaos
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
        self._handler(event, lambda_context(self.name))
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
                        handler(event, lambda_context(name))
                    except Exception as e:
                        logger.warning(
                            "event handler failed", extra={"handler": name, "error": repr(e)}
                        )
                    if n and self._chaos:
                        self._chaos.ledger.add(duplicate_deliveries=1)
                delivered += 1
        return delivered


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
