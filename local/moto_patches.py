"""Make moto's DynamoDB honour what lighthpc relies on: atomic conditional writes.

moto 5.2 reads an item, checks the condition and writes it back without a lock, so two threads
(the in-process fleet, or the threaded moto server serving several workers) can both pass the
same condition: two workers would claim one transaction. Real DynamoDB serialises writes per
item. One lock around moto's write paths restores that guarantee for the embedded AWS.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

_LOCK = threading.RLock()
_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items")
_applied = False


def make_dynamodb_writes_atomic() -> None:
    global _applied
    if _applied:
        return
    from moto.dynamodb.models import DynamoDBBackend

    for name in _WRITES:
        original = getattr(DynamoDBBackend, name)

        @functools.wraps(original)
        def locked(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            with _LOCK:
                return __original(self, *args, **kwargs)

        setattr(DynamoDBBackend, name, locked)
    _applied = True
