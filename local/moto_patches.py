"""Make moto's DynamoDB honour what lighthpc relies on: atomic conditional writes, isolated reads.

moto 5.2 reads an item, checks the condition and writes it back without a lock, so two threads
(the in-process fleet, or the threaded moto server serving several workers) can both pass the
same condition: two workers would claim one transaction. It also changes a stored item in place,
action by action, so a read in another thread can see it half-written (a claimed transaction
without its status yet). Real DynamoDB serialises writes per item and never shows a partial
write. One lock around each DynamoDB request (parsed, executed and answered) restores both.

The AWS-fidelity profile (local/fidelity.py) decides inside that lock (`set_dynamodb_hook`), so
its view of in-flight writes is exact; its latency sleeps happen before, outside the lock.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

_LOCK = threading.RLock()
_applied = False
# hook(handler, call): runs inside the lock; `call()` executes the request in moto.
DynamoHook = Callable[[Any, Callable[[], Any]], Any]
_hook: DynamoHook | None = None


def make_dynamodb_writes_atomic() -> None:
    global _applied
    if _applied:
        return
    from moto.dynamodb.responses import DynamoHandler

    original = DynamoHandler.call_action

    @functools.wraps(original)
    def serialised(self: Any) -> Any:
        with _LOCK:
            hook = _hook
            if hook is None:
                return original(self)
            return hook(self, lambda: original(self))

    DynamoHandler.call_action = serialised  # type: ignore[method-assign]
    _applied = True


def set_dynamodb_hook(hook: DynamoHook | None) -> DynamoHook | None:
    """Run `hook` around every DynamoDB request, inside the lock (None: none); returns the
    hook it replaces."""
    global _hook
    make_dynamodb_writes_atomic()
    with _LOCK:
        previous, _hook = _hook, hook
    return previous
