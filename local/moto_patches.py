"""Make moto's DynamoDB honour what lighthpc relies on: atomic conditional writes, isolated reads.

moto 5.2 reads an item, checks the condition and writes it back without a lock, so two threads
(the in-process fleet, or the threaded moto server serving several workers) can both pass the
same condition: two workers would claim one transaction. It also changes a stored item in place,
action by action, so a read in another thread can see it half-written (a claimed transaction
without its status yet). Real DynamoDB serialises writes per item and never shows a partial
write. One lock around each DynamoDB request (parsed, executed and answered) restores both.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

_LOCK = threading.RLock()
_applied = False


def make_dynamodb_writes_atomic() -> None:
    global _applied
    if _applied:
        return
    from moto.dynamodb.responses import DynamoHandler

    original = DynamoHandler.call_action

    @functools.wraps(original)
    def serialised(self: Any) -> Any:
        with _LOCK:
            return original(self)

    DynamoHandler.call_action = serialised  # type: ignore[method-assign]
    _applied = True
