"""Make moto's DynamoDB honour what lighthpc relies on: atomic conditional writes, isolated reads.

moto 5.2 reads an item, checks the condition and writes it back without a lock, so two threads
(the in-process fleet, or the threaded moto server serving several workers) can both pass the
same condition: two workers would claim one transaction. It also changes a stored item in place,
action by action, so a read in another thread can see it half-written (a claimed transaction
without its status yet). Real DynamoDB serialises writes per item and never shows a partial
write. One lock around each DynamoDB request (parsed, executed and answered) restores both.

The AWS-fidelity profile (local/fidelity.py) decides inside that lock (`set_dynamodb_hook`), so
its view of in-flight writes is exact; its latency sleeps happen before, outside the lock.

moto 5.2 also backs up every table a TransactWriteItems touches, whole (`copy.deepcopy` of the
table), to roll a cancelled transaction back: the cost of one transaction grows with the table,
and on the local stack's transactions table it was a fifth of the embedded AWS's CPU. Under the
lock nothing else writes meanwhile, so a journal of the items the transaction names (at most
100) rolls it back to exactly the same state (`_journal_transactions`).

And moto 5.2 answers every DynamoDB read through its generic response serializer, which walks
each attribute value member by member against the service model (about 1 ms per item: a Query
of 110 items took 0.11 s). moto already holds a scalar attribute value (S, N, BOOL, NULL, SS,
NS) in its wire form, so it is answered as stored (`_answer_scalars_as_stored`); maps, lists
and binary values still go through the serializer, which base64-encodes binary.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Callable
from typing import Any

_LOCK = threading.RLock()
_applied = False
# hook(handler, call): runs inside the lock; `call()` executes the request in moto.
DynamoHook = Callable[[Any, Callable[[], Any]], Any]
_hook: DynamoHook | None = None


def patch_dynamodb() -> None:
    """Atomic, isolated DynamoDB requests; transactions rolled back from a journal; scalar values
    answered as stored. Once per process."""
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
    _journal_transactions()
    _answer_scalars_as_stored()
    _applied = True


# The members of DynamoDB's AttributeValue that moto holds exactly as the wire carries them.
_WIRE_SCALARS = frozenset({"S", "N", "BOOL", "NULL", "SS", "NS"})


def _answer_scalars_as_stored() -> None:
    from moto.core.serialize import BaseJSONSerializer

    original = BaseJSONSerializer._serialize_type_structure

    @functools.wraps(original)
    def serialize_structure(self: Any, serialized: Any, value: Any, shape: Any, key: str) -> None:
        if (
            key
            and shape.name == "AttributeValue"
            and isinstance(value, dict)
            and len(value) == 1
            and next(iter(value)) in _WIRE_SCALARS
        ):
            self._default_serialize(serialized, value, shape, key)
            return
        original(self, serialized, value, shape, key)

    BaseJSONSerializer._serialize_type_structure = serialize_structure  # type: ignore[method-assign]


class _TablesNotCopied:
    """`copy` as moto.dynamodb.models sees it: a table is "copied" as itself while a transaction
    with its own journal runs (on this thread); everything else is copied as usual."""

    def __init__(self, table_type: type) -> None:
        self._table_type = table_type
        self.journaling = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)

    def deepcopy(self, value: Any, memo: Any = None) -> Any:
        if isinstance(value, self._table_type) and getattr(self.journaling, "on", False):
            return value
        return copy.deepcopy(value, memo)


def _journal_transactions() -> None:
    """TransactWriteItems rolled back from a journal of its items instead of whole-table copies
    (see the module's docstring). moto's own rollback then puts back the very table objects,
    and the journal undoes what the transaction wrote to them."""
    from moto.dynamodb import models
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table

    shim = _TablesNotCopied(Table)
    models.copy = shim  # type: ignore[assignment]
    original = models.DynamoDBBackend.transact_write_items

    def item_key(table: Any, op: dict[str, Any]) -> tuple[Any, Any] | None:
        try:
            key = op["Key"] if "Key" in op else op["Item"]
            hash_value = DynamoType(key[table.hash_key_attr])
            if table.range_key_attr is None:
                return hash_value, None
            return hash_value, DynamoType(key[table.range_key_attr])
        except (KeyError, TypeError):
            return None  # malformed: moto refuses it before writing anything

    @functools.wraps(original)
    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        journal = []
        for entry in transact_items:
            op = next(iter(entry.values()), None)
            table = self.tables.get(op.get("TableName")) if isinstance(op, dict) else None
            located = item_key(table, op) if table is not None else None
            if located is not None:
                hash_value, range_value = located
                if range_value is None:
                    before = table.items.get(hash_value)
                else:
                    before = table.items.get(hash_value, {}).get(range_value)
                journal.append((table, hash_value, range_value, copy.deepcopy(before)))
        shim.journaling.on = True
        try:
            original(self, transact_items)
        except BaseException:
            for table, hash_value, range_value, before in reversed(journal):
                if range_value is None:
                    holder, slot = table.items, hash_value
                else:
                    holder, slot = table.items.setdefault(hash_value, {}), range_value
                if before is None:
                    holder.pop(slot, None)
                else:
                    holder[slot] = before
                if range_value is not None and not table.items[hash_value]:
                    del table.items[hash_value]
            raise
        finally:
            shim.journaling.on = False

    models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def set_dynamodb_hook(hook: DynamoHook | None) -> DynamoHook | None:
    """Run `hook` around every DynamoDB request, inside the lock (None: none); returns the
    hook it replaces."""
    global _hook
    patch_dynamodb()
    with _LOCK:
        previous, _hook = _hook, hook
    return previous
