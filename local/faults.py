"""AWS's answers that moto never gives, injected at the client, one call at a time, for tests.

The AWS-fidelity profile (local/fidelity.py) injects these answers where AWS would give them,
in front of moto's handlers, for every client of the embedded AWS (`lighthpc up --fidelity aws`,
LIGHTHPC_FIDELITY=aws). This injector is its deterministic complement for a test that needs an
exact sequence ("the next two UpdateItems conflict"), whatever the timing.

A `FaultInjector` registers a botocore `before-call` hook on every client created while it is
installed (boto3's and pynamodb's alike). A matching call gets AWS's error answer instead of
moto's (a `TransactionConflictException`, a `TransactionCanceledException` whose reason is
`TransactionConflict`, a throttle), exactly as botocore would have parsed it from AWS, and is
counted in the injector's ledger. Nothing in product code knows.

botocore's own retries never see an injected answer (it replaces the request, retries
included), so what the product does with it is what it does on AWS once botocore gave up or
(for conflicts, which botocore never retries) at once.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import botocore.session
from botocore.awsrequest import AWSResponse


@dataclass
class Fault:
    """Answer `operation` of `service` with the error `code`: at `rate`, at most `times`."""

    name: str  # the ledger's key, e.g. "transaction_conflicts"
    service: str  # botocore's service name: "dynamodb", "s3"...
    operation: str  # "UpdateItem", "TransactWriteItems", "*"...
    code: str
    rate: float = 1.0
    times: int | None = None
    when: Callable[[dict[str, Any]], bool] | None = None  # on the call's parameters
    status: int = 400

    def answer(self, params: dict[str, Any]) -> dict[str, Any]:
        parsed: dict[str, Any] = {
            "Error": {"Code": self.code, "Message": f"injected: {self.name}"},
            "ResponseMetadata": {"HTTPStatusCode": self.status},
        }
        if self.code == "TransactionCanceledException":
            items = params.get("TransactItems", [])
            # The first item conflicted; DynamoDB names a reason per item, "None" for the rest.
            reasons = [{"Code": "TransactionConflict"}] + [{"Code": "None"}] * (len(items) - 1)
            parsed["CancellationReasons"] = reasons
            parsed["Error"]["Message"] = (
                "Transaction cancelled, please refer cancellation reasons for specific reasons"
                f" [{', '.join(r['Code'] for r in reasons)}]"
            )
        return parsed


TRANSACTION_CONFLICT = "TransactionConflictException"
TRANSACTION_CANCELLED = "TransactionCanceledException"
THROTTLED = "ThrottlingException"


class FaultInjector:
    def __init__(self, faults: list[Fault], seed: int = 1) -> None:
        self.faults = faults
        self.ledger: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def __call__(self, model: Any, params: dict[str, Any], **_: Any) -> Any:
        service = model.service_model.service_name
        with self._lock:
            for fault in self.faults:
                if fault.service != service or fault.operation not in (model.name, "*"):
                    continue
                if fault.times is not None and self.ledger[fault.name] >= fault.times:
                    continue
                if fault.when is not None and not fault.when(params):
                    continue
                if self._random.random() >= fault.rate:
                    continue
                self.ledger[fault.name] += 1
                http = AWSResponse("https://injected.invalid/", fault.status, {}, None)
                return http, fault.answer(params)
        return None

    @contextmanager
    def installed(self) -> Iterator[FaultInjector]:
        """Every botocore client created meanwhile answers through this injector."""
        with on_every_client("before-call.*.*", self):
            yield self


@contextmanager
def on_every_client(event: str, handler: Callable[..., Any]) -> Iterator[None]:
    """Register `handler` for `event` on every botocore client created meanwhile (boto3's and
    pynamodb's alike: both go through botocore's Session.create_client)."""
    original = botocore.session.Session.create_client

    def create_client(session: Any, *args: Any, **kwargs: Any) -> Any:
        client = original(session, *args, **kwargs)
        client.meta.events.register(event, handler)
        return client

    botocore.session.Session.create_client = create_client  # type: ignore[method-assign]
    try:
        yield
    finally:
        botocore.session.Session.create_client = original  # type: ignore[method-assign]
