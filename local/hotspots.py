"""Where the load lands: writes per DynamoDB item and requests per S3 prefix, counted by a botocore
hook on every client (as `ApiCallCounter` counts calls).

DynamoDB serves at most about 1,000 write units per second on one item (one partition's share),
and S3 about 3,500 writes and 5,500 reads per second per prefix (AWS_LIMITS.md): a design holds at
scale only if no single item and no single prefix takes a share of the traffic that grows with the
mission. The counter names the hottest of each, so a benchmark or a test can bound them per
transaction.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from local.faults import on_every_client

# DynamoDB operations that write, and how to find the items they write in their parameters.
_SINGLE_WRITES = {"PutItem": "Item", "UpdateItem": "Key", "DeleteItem": "Key"}
_S3_READS = {"GetObject", "HeadObject"}
_S3_WRITES = {"PutObject", "CopyObject", "UploadPart", "UploadPartCopy", "DeleteObject"}
_S3_KEYED = _S3_READS | _S3_WRITES


def _key_of(table: str, key: dict[str, Any], key_names: tuple[str, ...] | None = None) -> str:
    """A stable name for an item: its table and key attributes (all of `Item` for a PutItem is
    more than its key, so only the attributes that look like keys are kept)."""
    names = key_names or tuple(sorted(key))
    return f"{table}:" + json.dumps({n: key[n] for n in names if n in key}, sort_keys=True)


class HotspotCounter:
    """Counts DynamoDB writes per item and S3 requests per prefix (`prefix_depth` segments)."""

    def __init__(self, key_names: dict[str, tuple[str, ...]], prefix_depth: int = 2) -> None:
        # Each table's key attributes: a PutItem's `Item` carries more than the key.
        self.key_names = key_names
        self.prefix_depth = prefix_depth
        self.item_writes: Counter[str] = Counter()
        # Write capacity units per item: a write inside TransactWriteItems costs two.
        self.item_wcu: Counter[str] = Counter()
        self.prefix_requests: Counter[str] = Counter()
        self.prefix_writes: Counter[str] = Counter()
        self.prefix_reads: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, params: dict[str, Any], model: Any = None, **_: Any) -> None:
        service, operation = model.service_model.service_name, model.name
        with self._lock:
            if service == "dynamodb":
                units = 2 if operation == "TransactWriteItems" else 1
                for table, key in self._written(operation, params):
                    item = _key_of(table, key, self.key_names.get(table))
                    self.item_writes[item] += 1
                    self.item_wcu[item] += units
            elif service == "s3" and operation in _S3_KEYED and "Key" in params:
                segments = str(params["Key"]).split("/")[: self.prefix_depth]
                prefix = f"{params.get('Bucket')}/{'/'.join(segments)}"
                self.prefix_requests[prefix] += 1
                (self.prefix_reads if operation in _S3_READS else self.prefix_writes)[prefix] += 1

    def _written(self, operation: str, params: dict[str, Any]) -> Iterator[tuple[str, dict]]:
        if operation in _SINGLE_WRITES:
            yield params["TableName"], params[_SINGLE_WRITES[operation]]
        elif operation == "TransactWriteItems":
            for entry in params.get("TransactItems", []):
                for kind, body in entry.items():
                    if kind != "ConditionCheck":  # a check reads; it writes nothing
                        yield body["TableName"], body.get("Key") or body.get("Item", {})
        elif operation == "BatchWriteItem":
            for table, requests in params.get("RequestItems", {}).items():
                for request in requests:
                    body = request.get("PutRequest", {}).get("Item") or request.get(
                        "DeleteRequest", {}
                    ).get("Key", {})
                    yield table, body

    @contextmanager
    def installed(self) -> Iterator[HotspotCounter]:
        with on_every_client("before-parameter-build.*.*", self):
            yield self

    def reset(self) -> None:
        with self._lock:
            for counter in (
                self.item_writes,
                self.item_wcu,
                self.prefix_requests,
                self.prefix_writes,
                self.prefix_reads,
            ):
                counter.clear()

    def hottest_item(self) -> tuple[str, int]:
        return self.item_writes.most_common(1)[0] if self.item_writes else ("", 0)

    def hottest_prefix(self) -> tuple[str, int]:
        return self.prefix_requests.most_common(1)[0] if self.prefix_requests else ("", 0)

    def hottest(self, counter: Counter[str]) -> tuple[str, int]:
        return counter.most_common(1)[0] if counter else ("", 0)
