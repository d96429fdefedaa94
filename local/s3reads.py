"""What S3 sent: the bytes of every GetObject (its ContentLength), with its bucket, key and Range,
counted by a botocore hook on every client (as `local.hotspots` counts requests).

Used by the byte-range splitting tests and the `bytes` benchmark to bound what the scheduler and
the workers read of an input.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from local.faults import on_every_client

_CONTEXT_KEY = "lighthpc_s3_read"


@dataclass(frozen=True)
class Read:
    bucket: str
    key: str
    range: str | None  # the Range asked for (None: the whole object)
    bytes: int  # what S3 sent (ContentLength)
    thread: str  # who asked: a worker's slot thread, or the caller


class S3ReadCounter:
    def __init__(self) -> None:
        self.reads: list[Read] = []
        self._lock = threading.Lock()

    def _asked(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context[_CONTEXT_KEY] = (
            params.get("Bucket", ""),
            params.get("Key", ""),
            params.get("Range"),
        )

    def _answered(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        asked = context.get(_CONTEXT_KEY)
        if asked is None:
            return
        read = Read(*asked, int(parsed.get("ContentLength") or 0), threading.current_thread().name)
        with self._lock:
            self.reads.append(read)

    @contextmanager
    def installed(self) -> Iterator[S3ReadCounter]:
        with ExitStack() as stack:
            stack.enter_context(on_every_client("provide-client-params.s3.GetObject", self._asked))
            stack.enter_context(on_every_client("after-call.s3.GetObject", self._answered))
            yield self

    def reset(self) -> None:
        with self._lock:
            self.reads.clear()

    def of(self, bucket: str, key: str | None = None) -> list[Read]:
        with self._lock:
            return [r for r in self.reads if r.bucket == bucket and key in (None, r.key)]

    def bytes_of(self, bucket: str, key: str | None = None) -> int:
        return sum(r.bytes for r in self.of(bucket, key))
