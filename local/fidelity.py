"""The AWS-fidelity profile: the embedded AWS answers as AWS does where moto is forgiving.

moto never throttles a hot item, never reports a `TransactionConflict`, reads GSIs at once,
stores 40-digit numbers, counts SNS messages in characters, always fills an EC2 Fleet and
answers in a millisecond (../shared/MOTO_NOTES.md, "What moto hides"). With the profile on,
the process that runs moto answers like AWS (../shared/AWS_LIMITS.md), for every client (the
handlers, the CLI, the worker processes over HTTP), and product code knows nothing of it.

Each fault (its ledger name), where it is injected, and what a client sees:
- latency (`calls_delayed`): `BaseResponse.setup_class`, per service, before the DynamoDB lock
  (sleeps overlap); a slower answer.
- hot item (`throttles`): the DynamoDB hook, inside moto_patches' lock, like every DynamoDB fault;
  ProvisionedThroughputExceededException (botocore retries it), or in a transaction
  TransactionCanceledException with reason ThrottlingError at the item.
- transaction conflict (`transaction_conflicts`): TransactionCanceledException with reason
  TransactionConflict at the item; write conflict (`write_conflicts`): a Put/Update/DeleteItem
  on an item a transaction holds gets TransactionConflictException (botocore never retries it).
- GSI lag (`gsi_lag_hides`): Query/Scan on a GSI answers without the items a write put at a new
  place in it (added, or its index key changed) too recently; Count and ScannedCount adjusted.
- 38 digits (`number_too_large`), 400 KB (`item_too_large`: a put checked before it runs, an
  update after, rolled back): ValidationException.
- SNS's 256 KiB in bytes (`sns_too_large`): `SNSResponse.publish`; InvalidParameter.
- EC2 Fleet `instant` (`fleet_shortfalls`, `insufficient_capacity`): `EC2Response.create_fleet`;
  fewer Instances than asked (or none) and an Errors entry InsufficientInstanceCapacity per pool.

S3 events delayed, reordered and duplicated stay with the chaos switches (local/chaos.py:
`max_delay_seconds`, `duplicate`), which already act where the pump delivers them.

moto serialises DynamoDB requests (local/moto_patches.py), so "in flight" is modelled as a
window after a write: an item written by another caller less than `conflict_window_seconds`
ago is still in flight. In moto's in-process mock a caller is a thread, so a client's own
sequential requests never conflict, as on AWS. moto's server (werkzeug) closes every
connection after one request, so there each request is a caller of its own: a client's write
that follows its own transaction on the same item within the window is refused too, where AWS
would not (a few ms more of conflicts than AWS: keep the window short).

Every figure is in `FidelityOptions`; every decision draws from one seeded generator, so a run
can be repeated.

Not modelled: BatchWriteItem items are counted but never throttled or conflicted (AWS returns
them as UnprocessedItems); TransactGetItems never conflicts; a Select=COUNT query on a GSI is
not adjusted; an item a write removed from a GSI vanishes at once (AWS shows it a while longer);
eventually consistent table reads are fresh; SNS PublishBatch is not measured; moto's own item
limit (405,000 bytes by its count) stays, below AWS's 409,600; a hot partition's burst and
adaptive capacity are a sliding window of `hot_item_window_seconds`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import json
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from typing import Any

FIDELITY_ENV = "LIGHTHPC_FIDELITY"  # "aws" or "aws,name=value,...": read by local/embedded.py
PROFILES = ("aws", "off")
# Seconds (low, high) per call, uniform, by moto's service name. DynamoDB: single-digit ms;
# S3: tens of ms for small objects (AWS_LIMITS.md, S3 [S1][S2]).
DEFAULT_LATENCY: dict[str, tuple[float, float]] = {"dynamodb": (0.002, 0.008), "s3": (0.015, 0.05)}


class FidelityInvalid(ValueError):
    """A setting out of range or unknown; `options` names the FidelityOptions fields at fault."""

    def __init__(self, options: tuple[str, ...], reason: str) -> None:
        super().__init__(f"{' + '.join(options)}: {reason}")
        self.options = options
        self.reason = reason


@dataclass(frozen=True)
class FidelityOptions:
    """The profile's figures (AWS_LIMITS.md). A limit of 0 turns that fault off."""

    latency_seconds: Mapping[str, tuple[float, float]] = field(
        default_factory=lambda: dict(DEFAULT_LATENCY)
    )
    latency_scale: float = 1.0  # every latency times this (tests: 0.1)
    # One item: 1,000 WCU/s (a partition's cap); a transactional write costs 2 units.
    hot_item_writes_per_second: float = 1000.0
    hot_item_window_seconds: float = 1.0
    transaction_write_units: int = 2
    conflict_window_seconds: float = 0.02  # how long a write stays "in flight"
    gsi_lag_seconds: float = 1.0  # a GSI does not show an item it gained this recently
    max_number_digits: int = 38
    max_item_bytes: int = 400 * 1024
    sns_max_bytes: int = 256 * 1024  # 262,144 bytes: message + subject + attributes
    # Per EC2 Fleet `instant` call: the chance it gets no capacity at all, and the chance it
    # gets some but fewer than asked (each answered with Errors, as AWS does).
    insufficient_capacity_rate: float = 0.05
    fleet_shortfall_rate: float = 0.1
    seed: int = 1

    def __post_init__(self) -> None:
        """Refuse what cannot be meant, so a run never silently tests less than it says."""
        for name in ("insufficient_capacity_rate", "fleet_shortfall_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # NaN fails too
                raise FidelityInvalid((name,), f"must be a fraction from 0 to 1, not {value}")
        total = self.insufficient_capacity_rate + self.fleet_shortfall_rate
        if total > 1.0:
            raise FidelityInvalid(
                ("insufficient_capacity_rate", "fleet_shortfall_rate"),
                f"a fleet call meets one fate at most: the rates sum to {total:g}, above 1",
            )
        for name in (
            "latency_scale",
            "hot_item_writes_per_second",
            "conflict_window_seconds",
            "gsi_lag_seconds",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise FidelityInvalid((name,), f"must be 0 or more, not {value}")
        if not (math.isfinite(self.hot_item_window_seconds) and self.hot_item_window_seconds > 0):
            raise FidelityInvalid(
                ("hot_item_window_seconds",), f"must be above 0, not {self.hot_item_window_seconds}"
            )
        for name in (
            "transaction_write_units",
            "max_number_digits",
            "max_item_bytes",
            "sns_max_bytes",
        ):
            if getattr(self, name) < 0:
                raise FidelityInvalid((name,), f"must be 0 or more, not {getattr(self, name)}")
        for service, (low, high) in self.latency_seconds.items():
            if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
                raise FidelityInvalid(
                    ("latency_seconds",),
                    f"{service}: must be low:high with 0 <= low <= high, not {low}:{high}",
                )

    @classmethod
    def parse(cls, spec: str | None) -> FidelityOptions | None:
        """`aws` (the defaults), `aws,name=value,...` or `off` (None).

        Names are the fields; `latency.<service>=low:high` sets one service's latency
        (`latency.s3=0.02:0.08`), `latency=off` removes them all."""
        text = (spec or "").strip()
        if text.lower() in ("", "off", "none"):
            return None
        profile, *settings = [part.strip() for part in text.split(",")]
        if profile != "aws":
            raise FidelityInvalid(
                ("profile",), f"unknown profile {profile!r} (known: {', '.join(PROFILES)})"
            )
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        latency = dict(DEFAULT_LATENCY)
        for setting in filter(None, settings):
            name, equals, value = (s.strip() for s in setting.partition("="))
            if not equals:
                raise FidelityInvalid((name,), f"expected name=value, not {setting!r}")
            if name == "latency" and value == "off":
                latency = {}
            elif name.startswith("latency."):
                latency[name.removeprefix("latency.")] = _seconds_range(name, value)
            elif name in types and name != "latency_seconds":
                values[name] = _number(name, value, integer=types[name] == "int")
            else:
                names = [n for n in types if n != "latency_seconds"]
                known = ", ".join(sorted([*names, "latency.<service>"]))
                raise FidelityInvalid((name,), f"unknown setting (known: {known})")
        return cls(latency_seconds=latency, **values)

    def describe(self) -> str:
        latency = ", ".join(
            f"{s} {lo * self.latency_scale * 1000:g}-{hi * self.latency_scale * 1000:g} ms"
            for s, (lo, hi) in sorted(self.latency_seconds.items())
        )
        return (
            f"latency ({latency or 'none'}); hot item > {self.hot_item_writes_per_second:g}"
            f" writes/s; conflict window {self.conflict_window_seconds * 1000:g} ms;"
            f" GSI lag {self.gsi_lag_seconds:g} s; fleet: {self.insufficient_capacity_rate:.0%}"
            f" no capacity, {self.fleet_shortfall_rate:.0%} short"
        )


def _number(name: str, text: str, *, integer: bool) -> float | int:
    try:
        return int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise FidelityInvalid((name,), f"must be {kind}, not {text!r}") from None


def _seconds_range(name: str, text: str) -> tuple[float, float]:
    low, _, high = text.partition(":")
    try:
        return float(low), float(high or low)
    except ValueError:
        raise FidelityInvalid((name,), f"must be low:high seconds, not {text!r}") from None


# ---- the ledger ----------------------------------------------------------------------------


@dataclass
class FidelityLedger:
    """What the profile injected, by plain names (the chaos suite's `injected.<name>`)."""

    calls_delayed: int = 0
    seconds_delayed: float = 0.0
    throttles: int = 0
    transaction_conflicts: int = 0  # TransactWriteItems cancelled: TransactionConflict
    write_conflicts: int = 0  # Put/Update/DeleteItem refused: TransactionConflictException
    gsi_lag_hides: int = 0  # items a GSI read did not return yet
    number_too_large: int = 0
    item_too_large: int = 0
    sns_too_large: int = 0
    fleet_shortfalls: int = 0  # instant fleets given fewer instances than asked
    insufficient_capacity: int = 0  # instant fleets given none
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            counts = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        counts["seconds_delayed"] = round(counts["seconds_delayed"], 1)
        return counts

    def summary(self) -> str:
        return ", ".join(f"{name} {n:g}" for name, n in self.as_dict().items())


# ---- pure rules: numbers, sizes ------------------------------------------------------------


def number_problem(text: str, max_digits: int = 38) -> str | None:
    """AWS's refusal of a DynamoDB number, or None. Leading and trailing zeros are not
    significant (1E+39 is one digit); a number moto could not parse is moto's to refuse."""
    try:
        number = Decimal(text)
    except (InvalidOperation, TypeError, ValueError):
        return None
    if not number.is_finite() or number.is_zero():
        return None
    digits = "".join(map(str, number.as_tuple().digits)).strip("0")
    if max_digits and len(digits) > max_digits:
        return f"Attempting to store more than {max_digits} significant digits in a Number"
    if number.adjusted() > 125:
        return (
            "Number overflow. Attempting to store a number with magnitude larger than"
            " supported range"
        )
    if number.adjusted() < -130:
        return (
            "Number underflow. Attempting to store a number with magnitude smaller than"
            " supported range"
        )
    return None


def numbers_in(value: Any) -> Iterator[str]:
    """Every number (N, NS) in an attribute value, nested lists and maps included."""
    if not isinstance(value, Mapping):
        return
    for kind, inner in value.items():
        if kind == "N":
            yield inner
        elif kind == "NS":
            yield from inner
        elif kind == "L":
            for element in inner:
                yield from numbers_in(element)
        elif kind == "M":
            for element in inner.values():
                yield from numbers_in(element)


def _binary_size(value: Any) -> int:
    if isinstance(value, bytes | bytearray):
        return len(value)
    try:  # as it arrives over the wire or leaves in an answer: base64
        return len(base64.b64decode(value))
    except (binascii.Error, TypeError, ValueError):
        return len(str(value).encode())


def _number_size(text: str) -> int:
    try:
        digits = "".join(map(str, Decimal(text).as_tuple().digits)).strip("0")
    except (InvalidOperation, TypeError, ValueError):
        return len(str(text))
    return math.ceil(len(digits) / 2) + 1


def attribute_size(value: Mapping[str, Any]) -> int:
    """DynamoDB's size of one attribute value, by its documented rules: strings and binary in
    bytes, numbers a byte per two significant digits plus one, lists and maps 3 bytes plus a
    byte per element."""
    size = 0
    for kind, inner in value.items():
        if kind == "S":
            size += len(inner.encode())
        elif kind == "N":
            size += _number_size(inner)
        elif kind == "B":
            size += _binary_size(inner)
        elif kind == "SS":
            size += sum(len(s.encode()) for s in inner)
        elif kind == "NS":
            size += sum(_number_size(n) for n in inner)
        elif kind == "BS":
            size += sum(_binary_size(b) for b in inner)
        elif kind in ("BOOL", "NULL"):
            size += 1
        elif kind == "L":
            size += 3 + sum(1 + attribute_size(e) for e in inner)
        elif kind == "M":
            size += 3 + sum(1 + len(k.encode()) + attribute_size(e) for k, e in inner.items())
    return size


def item_size(item: Mapping[str, Mapping[str, Any]]) -> int:
    """An item's size: its attribute names (UTF-8) and values."""
    return sum(len(name.encode()) + attribute_size(value) for name, value in item.items())


def sns_message_bytes(
    message: str | None, subject: str | None, attributes: Mapping[str, Mapping[str, Any]]
) -> int:
    """What SNS counts against 256 KiB: bytes of the message, subject and attributes (name,
    type and value each)."""
    size = len((message or "").encode()) + len((subject or "").encode())
    for name, attribute in attributes.items():
        size += len(name.encode()) + len(str(attribute.get("DataType", "")).encode())
        if "BinaryValue" in attribute:
            size += _binary_size(attribute["BinaryValue"])
        else:
            size += len(str(attribute.get("StringValue", "")).encode())
    return size


# ---- pure rules: traffic on items ----------------------------------------------------------

ItemKey = tuple[str, str]  # (table, the key's canonical JSON)


@dataclass(frozen=True)
class _Touch:
    caller: Hashable
    at: float
    transactional: bool


class ItemTraffic:
    """Per item: write units in the throttle window, recent writers (in flight), and when a
    write last moved it in each GSI (lag). Times are the caller's (seconds, monotonic)."""

    PRUNE_EVERY = 5000

    def __init__(self, options: FidelityOptions) -> None:
        self.options = options
        self._units: dict[ItemKey, deque[tuple[float, int]]] = {}
        self._touches: dict[ItemKey, list[_Touch]] = {}
        self._written: dict[tuple[ItemKey, str], float] = {}  # (item, index) -> when
        self._changes = 0
        self._lock = threading.Lock()

    def throttled(self, key: ItemKey, units: int, now: float) -> bool:
        """Would `units` more write units now take the item above its rate?"""
        limit = self.options.hot_item_writes_per_second * self.options.hot_item_window_seconds
        if not limit or not units:
            return False
        with self._lock:
            window = self._window(key, now)
            return sum(u for _, u in window) + units > limit

    def consume(self, key: ItemKey, units: int, now: float) -> None:
        if units:
            with self._lock:
                self._window(key, now).append((now, units))
                self._tidy(now)

    def _window(self, key: ItemKey, now: float) -> deque[tuple[float, int]]:
        window = self._units.setdefault(key, deque())
        while window and window[0][0] <= now - self.options.hot_item_window_seconds:
            window.popleft()
        return window

    def in_flight(
        self, key: ItemKey, caller: Hashable, now: float, *, transactions_only: bool
    ) -> bool:
        """Does another caller's recent write (a transaction's, with `transactions_only`) still
        hold the item?"""
        window = self.options.conflict_window_seconds
        if not window:
            return False
        with self._lock:
            touches = [t for t in self._touches.get(key, ()) if t.at > now - window]
            if touches:
                self._touches[key] = touches
            else:
                self._touches.pop(key, None)
            return any(
                t.caller != caller and (t.transactional or not transactions_only) for t in touches
            )

    def touch(self, key: ItemKey, caller: Hashable, now: float, transactional: bool) -> None:
        if self.options.conflict_window_seconds:
            with self._lock:
                self._touches.setdefault(key, []).append(_Touch(caller, now, transactional))
                self._tidy(now)

    def entered(self, key: ItemKey, index: str, now: float) -> None:
        """A write put the item at a new place in the index (it was not there, or its index
        key changed)."""
        if self.options.gsi_lag_seconds:
            with self._lock:
                self._written[key, index] = now
                self._tidy(now)

    def hidden(self, key: ItemKey, index: str, now: float) -> bool:
        """Is the item's place in the index too fresh for the index to show it yet?"""
        with self._lock:
            written = self._written.get((key, index))
        return written is not None and now - written < self.options.gsi_lag_seconds

    def _tidy(self, now: float) -> None:
        """Forget what no decision can use any more (moto never forgets; this should not)."""
        self._changes += 1
        if self._changes % self.PRUNE_EVERY:
            return
        lag, conflict = self.options.gsi_lag_seconds, self.options.conflict_window_seconds
        hot = self.options.hot_item_window_seconds
        self._written = {k: t for k, t in self._written.items() if now - t < lag}
        self._touches = {k: ts for k, ts in self._touches.items() if now - ts[-1].at < conflict}
        self._units = {k: w for k, w in self._units.items() if w and now - w[-1][0] < hot}


# ---- DynamoDB requests, as the rules see them -----------------------------------------------

_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})
_TRANSACT_KINDS = {"Put": "put", "Update": "update", "Delete": "delete", "ConditionCheck": "check"}
Schema = Callable[[str], tuple[str, ...]]  # table name -> its key attribute names


@dataclass(frozen=True)
class WriteAction:
    """One item a write request touches."""

    kind: str  # put, update, delete, check (a transaction's ConditionCheck)
    table: str
    key: dict[str, Any]
    item: Mapping[str, Any] | None = None  # a put's item
    values: tuple[Any, ...] = ()  # every attribute value the action carries

    @property
    def item_key(self) -> ItemKey:
        return self.table, canonical_key(self.key)


def canonical_key(key: Mapping[str, Any]) -> str:
    """One spelling for a key, whether binary arrives as bytes (a request) or base64 (an
    answer)."""

    def plain(value: Any) -> Any:
        if isinstance(value, bytes | bytearray):
            return base64.b64encode(value).decode()
        raise TypeError(type(value).__name__)

    return json.dumps(key, sort_keys=True, default=plain)


def _key_of(item: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: item[name] for name in names if name in item}


def _values_of(request: Mapping[str, Any]) -> tuple[Any, ...]:
    found: list[Any] = []
    for name in ("Item", "Key", "ExpressionAttributeValues"):
        found.extend((request.get(name) or {}).values())
    for update in (request.get("AttributeUpdates") or {}).values():
        if "Value" in update:
            found.append(update["Value"])
    for expected in (request.get("Expected") or {}).values():
        if "Value" in expected:
            found.append(expected["Value"])
        found.extend(expected.get("AttributeValueList") or [])
    return tuple(found)


def write_actions(operation: str, params: Mapping[str, Any], schema: Schema) -> list[WriteAction]:
    """The items a DynamoDB write request touches, in request order."""
    if operation in ("PutItem", "UpdateItem", "DeleteItem"):
        table = params["TableName"]
        kind = {"PutItem": "put", "UpdateItem": "update", "DeleteItem": "delete"}[operation]
        item = params.get("Item") if kind == "put" else None
        key = _key_of(item, schema(table)) if item is not None else dict(params.get("Key") or {})
        return [WriteAction(kind, table, key, item, _values_of(params))]
    if operation == "TransactWriteItems":
        actions = []
        for entry in params.get("TransactItems") or []:
            (name, request), *_ = entry.items()
            table, kind = request["TableName"], _TRANSACT_KINDS.get(name, "check")
            item = request.get("Item") if kind == "put" else None
            key = _key_of(item, schema(table)) if item else dict(request.get("Key") or {})
            actions.append(WriteAction(kind, table, key, item, _values_of(request)))
        return actions
    if operation == "BatchWriteItem":
        actions = []
        for table, requests in (params.get("RequestItems") or {}).items():
            for request in requests:
                if "PutRequest" in request:
                    item = request["PutRequest"]["Item"]
                    key = _key_of(item, schema(table))
                    actions.append(WriteAction("put", table, key, item, tuple(item.values())))
                elif "DeleteRequest" in request:
                    key = dict(request["DeleteRequest"]["Key"])
                    actions.append(WriteAction("delete", table, key, None, tuple(key.values())))
        return actions
    return []


def index_places(
    attributes: Mapping[str, Any] | None, indexes: Mapping[str, tuple[str, ...]]
) -> dict[str, str]:
    """Where an item sits in each GSI (the canonical JSON of its index key); a GSI is sparse:
    an item without every key attribute of an index is not in it."""
    if attributes is None:
        return {}
    return {
        name: canonical_key(_key_of(attributes, keys))
        for name, keys in indexes.items()
        if all(k in attributes for k in keys)
    }


def entered_indexes(before: Mapping[str, str], after: Mapping[str, str]) -> set[str]:
    """The GSIs in which a write put the item at a new place: those an update or a put added
    it to, or moved it in. Where it stayed, AWS shows a stale copy meanwhile (moto's fresh
    one is shown: close enough); where it left, a stale copy lingers (moto has none to show)."""
    return {name for name, place in after.items() if before.get(name) != place}


def validation_problem(
    actions: Iterable[WriteAction], options: FidelityOptions
) -> tuple[str, str] | None:
    """(ledger name, ValidationException message) for a write AWS refuses as it stands."""
    actions = list(actions)
    for action in actions:
        for value in action.values:
            for number in numbers_in(value):
                problem = number_problem(number, options.max_number_digits)
                if problem:
                    return "number_too_large", problem
    if options.max_item_bytes:
        for action in actions:
            if action.item is not None and item_size(action.item) > options.max_item_bytes:
                return "item_too_large", "Item size has exceeded the maximum allowed size"
    return None


# ---- answers, as DynamoDB gives them --------------------------------------------------------

_DYNAMODB_ERROR = "com.amazonaws.dynamodb.v20120810#"
_THROUGHPUT = (
    "The level of configured provisioned throughput for the table was exceeded."
    " Consider increasing your provisioning level with the UpdateTable API."
)
_THROTTLED_IN_TRANSACTION = (
    "Throughput exceeds the current capacity of your table or index. DynamoDB is automatically"
    " scaling your table or index so please try again shortly."
)
_IN_FLIGHT = "Transaction is ongoing for the item"


def _answer(status: int, body: dict[str, Any], headers: dict[str, Any] | None = None) -> Any:
    from moto.utilities.aws_headers import gen_amz_crc32

    text = json.dumps(body)
    out = {"Content-Type": "application/x-amz-json-1.0", **(headers or {})}
    gen_amz_crc32(text, out)  # botocore checks DynamoDB's CRC32 header
    return status, out, text


def dynamodb_error(code: str, message: str) -> Any:
    return _answer(400, {"__type": _DYNAMODB_ERROR + code, "message": message})


def transaction_cancelled(count: int, at: dict[int, tuple[str, str]]) -> Any:
    """TransactionCanceledException with one reason per item: `at` maps positions to
    (code, message); the others read "None", as DynamoDB answers."""
    reasons = [
        {"Code": at[i][0], "Message": at[i][1]} if i in at else {"Code": "None"}
        for i in range(count)
    ]
    message = (
        "Transaction cancelled, please refer cancellation reasons for specific reasons"
        f" [{', '.join(r['Code'] for r in reasons)}]"
    )
    body = {
        "__type": _DYNAMODB_ERROR + "TransactionCanceledException",
        "Message": message,
        "CancellationReasons": reasons,
    }
    return _answer(400, body)


def caller_of(handler: Any) -> Hashable:
    """Who sent the request: its thread in moto's in-process mock; in server mode its
    connection, which werkzeug closes after each request (so each request is its own caller)."""
    request = getattr(handler, "normalized_request", None)
    environ = getattr(request, "environ", None) or {}
    port = environ.get("REMOTE_PORT")
    if getattr(request, "from_wsgi_server", False) and port:
        return ("connection", environ.get("REMOTE_ADDR"), str(port))
    return ("thread", threading.get_ident())


# ---- the profile ---------------------------------------------------------------------------


class Fidelity:
    """One profile's decisions and its ledger; `install` puts it in front of moto."""

    def __init__(
        self,
        options: FidelityOptions,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.options = options
        self.ledger = FidelityLedger()
        self.traffic = ItemTraffic(options)
        self._clock = clock
        self._sleep = sleep
        self._random = random.Random(options.seed)
        self._lock = threading.Lock()

    # ---- decisions (no moto) ----------------------------------------------------------

    def latency(self, service: str) -> float:
        low, high = self.options.latency_seconds.get(service, (0.0, 0.0))
        if not high:
            return 0.0
        with self._lock:
            return self._random.uniform(low, high) * self.options.latency_scale

    def fleet_grant(self, requested: int) -> tuple[int, str | None]:
        """Capacity an instant fleet gets, and the ledger name of the fault (None: all)."""
        if requested <= 0:
            return requested, None
        with self._lock:
            roll = self._random.random()
            partial = self._random.randint(1, requested - 1) if requested > 1 else 0
        if roll < self.options.insufficient_capacity_rate:
            return 0, "insufficient_capacity"
        if roll < self.options.insufficient_capacity_rate + self.options.fleet_shortfall_rate:
            return partial, "fleet_shortfalls"
        return requested, None

    def sns_too_large(self, message: str | None, subject: str | None, attributes: Any) -> bool:
        limit = self.options.sns_max_bytes
        if not limit or sns_message_bytes(message, subject, attributes or {}) <= limit:
            return False
        self.ledger.add(sns_too_large=1)
        return True

    def admit(
        self, operation: str, actions: list[WriteAction], caller: Hashable, now: float
    ) -> Any | None:
        """AWS's refusal of a write that meets a hot item or an in-flight write (an answer
        to send instead of moto's), or None to let it through."""
        transactional = operation == "TransactWriteItems"
        if operation == "BatchWriteItem":
            return None  # its items fail one by one (UnprocessedItems): not modelled
        units = self.options.transaction_write_units if transactional else 1
        for position, action in enumerate(actions):
            if action.kind != "check" and self.traffic.throttled(action.item_key, units, now):
                self.ledger.add(throttles=1)
                if transactional:
                    reason = ("ThrottlingError", _THROTTLED_IN_TRANSACTION)
                    return transaction_cancelled(len(actions), {position: reason})
                return dynamodb_error("ProvisionedThroughputExceededException", _THROUGHPUT)
        conflicts = {
            position: ("TransactionConflict", _IN_FLIGHT)
            for position, action in enumerate(actions)
            if self.traffic.in_flight(
                action.item_key, caller, now, transactions_only=not transactional
            )
        }
        if not conflicts:
            return None
        if transactional:
            self.ledger.add(transaction_conflicts=1)
            return transaction_cancelled(len(actions), conflicts)
        self.ledger.add(write_conflicts=1)
        return dynamodb_error("TransactionConflictException", _IN_FLIGHT)

    def executed(
        self,
        operation: str,
        actions: list[WriteAction],
        caller: Hashable,
        now: float,
        entered: Mapping[ItemKey, Iterable[str]] | None = None,
    ) -> None:
        """Record a write moto executed: its units (a refused condition costs them too), its
        items in flight, and the GSIs in which it put an item at a new place (`entered`)."""
        transactional = operation == "TransactWriteItems"
        units = self.options.transaction_write_units if transactional else 1
        for action in actions:
            key = action.item_key
            if action.kind != "check":
                self.traffic.consume(key, units, now)
            self.traffic.touch(key, caller, now, transactional)
        for key, indexes in (entered or {}).items():
            for index in indexes:
                self.traffic.entered(key, index, now)

    # ---- moto-facing hooks ------------------------------------------------------------

    def delay(self, service: str) -> None:
        seconds = self.latency(service)
        if seconds > 0:
            self._sleep(seconds)
            self.ledger.add(calls_delayed=1, seconds_delayed=seconds)

    def dynamodb(self, handler: Any, call: Callable[[], Any]) -> Any:
        """Around one DynamoDB request, inside moto_patches' lock."""
        operation = handler._get_action()
        if operation in _WRITES:
            return self._write(handler, operation, call)
        if operation in ("Query", "Scan"):
            return self._index_read(handler, call)
        return call()

    def _write(self, handler: Any, operation: str, call: Callable[[], Any]) -> Any:
        params = getattr(handler, "params", None) or {}
        try:
            actions = write_actions(operation, params, _schema(handler))
        except Exception:  # a malformed request or an unknown table: moto answers it
            return call()
        problem = validation_problem(actions, self.options)
        if problem is not None:
            name, message = problem
            self.ledger.add(**{name: 1})
            return dynamodb_error("ValidationException", message)
        caller, now = caller_of(handler), self._clock()
        refusal = self.admit(operation, actions, caller, now)
        if refusal is not None:
            return refusal
        before = _pre_images(handler, actions) if self.options.max_item_bytes else {}
        places = _index_places(handler, actions) if self.options.gsi_lag_seconds else {}
        response = call()
        succeeded = int(response[0]) == 200
        if succeeded and before and _too_large(handler, before, self.options.max_item_bytes):
            _restore(handler, before)
            self.ledger.add(item_too_large=1)
            return dynamodb_error(
                "ValidationException", "Item size to update has exceeded the maximum allowed size"
            )
        entered = _entered(handler, places) if succeeded else {}
        self.executed(operation, actions, caller, self._clock(), entered)
        return response

    def _index_read(self, handler: Any, call: Callable[[], Any]) -> Any:
        params = getattr(handler, "params", None) or {}
        index = params.get("IndexName")
        if not index or not self.options.gsi_lag_seconds:
            return call()
        try:
            table = handler.dynamodb_backend.get_table(params["TableName"])
            names = _key_names(table)
        except Exception:
            return call()
        if index not in {i.name for i in table.global_indexes}:
            return call()  # a local index reads consistently
        status, headers, body = call()
        if int(status) != 200:
            return status, headers, body
        answer = json.loads(body)
        items = answer.get("Items")
        if not items:  # none, or Select=COUNT: nothing to take out
            return status, headers, body
        now = self._clock()
        shown = [
            item
            for item in items
            if not self.traffic.hidden(
                (table.name, canonical_key(_key_of(item, names))), index, now
            )
        ]
        hidden = len(items) - len(shown)
        if not hidden:
            return status, headers, body
        self.ledger.add(gsi_lag_hides=hidden)
        answer["Items"] = shown
        answer["Count"] = len(shown)
        if "ScannedCount" in answer:
            answer["ScannedCount"] = max(0, answer["ScannedCount"] - hidden)
        stale = ("x-amz-crc32", "content-length")
        kept = {k: v for k, v in headers.items() if k.lower() not in stale}
        return _answer(int(status), answer, kept)

    def create_fleet(self, handler: Any, original: Callable[[], Any]) -> Any:
        """An instant fleet, given the capacity the profile grants, with AWS's Errors."""
        params = getattr(handler, "params", None)
        if not isinstance(params, dict) or params.get("Type") != "instant":
            return original()
        spec = dict(params.get("TargetCapacitySpecification") or {})
        requested = int(spec.get("TotalTargetCapacity") or 0)
        granted, fault = self.fleet_grant(requested)
        if fault is None:
            return original()
        spot = min(int(spec.get("SpotTargetCapacity") or 0), granted)
        on_demand = min(int(spec.get("OnDemandTargetCapacity") or 0), granted - spot)
        spec.update(TotalTargetCapacity=granted)
        if "SpotTargetCapacity" in spec:
            spec["SpotTargetCapacity"] = spot
        if "OnDemandTargetCapacity" in spec:
            spec["OnDemandTargetCapacity"] = on_demand
        handler.params = {**params, "TargetCapacitySpecification": spec}
        result = original()
        market = spec.get("DefaultTargetCapacityType") or "on-demand"
        errors = fleet_errors(params.get("LaunchTemplateConfigs") or [], market)
        if isinstance(getattr(result, "result", None), dict):
            result.result["Errors"] = [*result.result.get("Errors", []), *errors]
        self.ledger.add(**{fault: 1})
        return result


def fleet_errors(configs: list[dict[str, Any]], market: str) -> list[dict[str, Any]]:
    """One InsufficientInstanceCapacity entry per pool (template and override) asked for."""
    lifecycle = "spot" if market == "spot" else "on-demand"
    errors = []
    for config in configs:
        template = {
            k: v
            for k, v in (config.get("LaunchTemplateSpecification") or {}).items()
            if k in ("LaunchTemplateId", "LaunchTemplateName", "Version")
        }
        for override in config.get("Overrides") or [{}]:
            pool = {
                k: v
                for k, v in override.items()
                if k in ("InstanceType", "SubnetId", "AvailabilityZone")
            }
            instance_type = pool.get("InstanceType", "the requested")
            message = (
                "There is no Spot capacity available that matches your request."
                if lifecycle == "spot"
                else f"We currently do not have sufficient {instance_type} capacity in the"
                " Availability Zone you requested. Our system will be working on provisioning"
                " additional capacity."
            )
            entry: dict[str, Any] = {
                "LaunchTemplateAndOverrides": {"LaunchTemplateSpecification": template},
                "Lifecycle": lifecycle,
                "ErrorCode": "InsufficientInstanceCapacity",
                "ErrorMessage": message,
            }
            if pool:
                entry["LaunchTemplateAndOverrides"]["Overrides"] = pool
            errors.append(entry)
    return errors


# ---- moto internals the hooks read (one place) ----------------------------------------------


def _key_names(table: Any) -> tuple[str, ...]:
    return tuple(n for n in (table.hash_key_attr, table.range_key_attr) if n)


def _schema(handler: Any) -> Schema:
    backend = handler.dynamodb_backend

    @functools.cache
    def names(table: str) -> tuple[str, ...]:
        return _key_names(backend.get_table(table))

    return names


def _dynamo_keys(table: Any, key: Mapping[str, Any]) -> tuple[Any, Any]:
    from moto.dynamodb.models.dynamo_type import DynamoType

    hash_key = DynamoType(key[table.hash_key_attr])
    range_key = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
    return hash_key, range_key


def _gsi_keys(table: Any) -> dict[str, tuple[str, ...]]:
    return {index.name: tuple(index.schema_key_attrs) for index in table.global_indexes}


def _stored_attributes(table: Any, key: Mapping[str, Any]) -> dict[str, Any] | None:
    stored = table.get_item(*_dynamo_keys(table, key))
    return None if stored is None else stored.to_json()["Attributes"]


def _index_places(handler: Any, actions: list[WriteAction]) -> dict[ItemKey, tuple]:
    """Before a write: (table, key, its places in the table's GSIs) for each item it writes."""
    places: dict[ItemKey, tuple] = {}
    for action in actions:
        if action.kind == "check":
            continue
        try:
            table = handler.dynamodb_backend.get_table(action.table)
            indexes = _gsi_keys(table)
            if indexes:
                before = index_places(_stored_attributes(table, action.key), indexes)
                places[action.item_key] = (table, action.key, indexes, before)
        except Exception:  # noqa: S112 - moto answers it (a missing table, a malformed key)
            continue
    return places


def _entered(handler: Any, places: dict[ItemKey, tuple]) -> dict[ItemKey, set[str]]:
    """After a write: the GSIs in which each item it wrote took a new place."""
    entered: dict[ItemKey, set[str]] = {}
    for item_key, (table, key, indexes, before) in places.items():
        after = index_places(_stored_attributes(table, key), indexes)
        if names := entered_indexes(before, after):
            entered[item_key] = names
    return entered


def _pre_images(handler: Any, actions: list[WriteAction]) -> dict[ItemKey, tuple[Any, Any, Any]]:
    """(table, key, stored item or None) of each item a request with an update writes, to
    restore them all (a transaction stays all or nothing) if an updated item outgrows the
    limit. A put is checked before it runs; a request without updates needs none."""
    images: dict[ItemKey, tuple[Any, Any, Any]] = {}
    if not any(action.kind == "update" for action in actions):
        return images
    for action in actions:
        if action.kind == "check":
            continue
        try:
            table = handler.dynamodb_backend.get_table(action.table)
            hash_key, range_key = _dynamo_keys(table, action.key)
            stored = table.get_item(hash_key, range_key)
        except Exception:  # noqa: S112 - moto answers it (a missing table, a malformed key)
            continue
        images[action.item_key] = (table, action.key, copy.deepcopy(stored))
    return images


def _too_large(handler: Any, images: dict[ItemKey, tuple[Any, Any, Any]], limit: int) -> bool:
    for table, key, _ in images.values():
        stored = table.get_item(*_dynamo_keys(table, key))
        if stored is not None and item_size(stored.to_json()["Attributes"]) > limit:
            return True
    return False


def _restore(handler: Any, images: dict[ItemKey, tuple[Any, Any, Any]]) -> None:
    for table, key, before in images.values():
        hash_key, range_key = _dynamo_keys(table, key)
        if before is None:
            table.delete_item(hash_key, range_key)
        elif range_key is not None:
            table.items[hash_key][range_key] = before
        else:
            table.items[hash_key] = before


# ---- install / uninstall -------------------------------------------------------------------

_ACTIVE: Fidelity | None = None
_PATCHES: list[tuple[Any, str, bool, Any]] = []  # (owner, name, owned, original)
_INSTALL_LOCK = threading.Lock()


def active() -> Fidelity | None:
    """The installed profile (its ledger), or None."""
    return _ACTIVE


def _patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    owned = name in vars(owner)
    original = getattr(owner, name)
    _PATCHES.append((owner, name, owned, vars(owner).get(name)))
    setattr(owner, name, make(original))


def _apply_patches() -> None:
    from moto.core.responses import BaseResponse
    from moto.ec2.responses import EC2Response
    from moto.sns.exceptions import SNSInvalidParameter
    from moto.sns.responses import SNSResponse

    from local import moto_patches

    def setup_class(original: Any) -> Any:
        @functools.wraps(original)
        def delayed(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            profile = _ACTIVE
            if profile is not None:  # before the DynamoDB lock: sleeps overlap
                profile.delay(self.service_name or "")
            return result

        return delayed

    def publish(original: Any) -> Any:
        @functools.wraps(original)
        def limited(self: Any) -> Any:
            profile = _ACTIVE
            if profile is not None and profile.sns_too_large(
                self._get_param("Message"),
                self._get_param("Subject"),
                self._get_param("MessageAttributes", {}),
            ):
                raise SNSInvalidParameter("Invalid parameter: Message too long")
            return original(self)

        return limited

    def create_fleet(original: Any) -> Any:
        @functools.wraps(original)
        def rationed(self: Any) -> Any:
            profile = _ACTIVE
            if profile is None:
                return original(self)
            return profile.create_fleet(self, lambda: original(self))

        return rationed

    _patch(BaseResponse, "setup_class", setup_class)
    _patch(SNSResponse, "publish", publish)
    _patch(EC2Response, "create_fleet", create_fleet)

    def dynamodb(handler: Any, call: Callable[[], Any]) -> Any:
        profile = _ACTIVE
        return call() if profile is None else profile.dynamodb(handler, call)

    previous = moto_patches.set_dynamodb_hook(dynamodb)
    _PATCHES.append((moto_patches, "_hook", True, previous))


def install(options: FidelityOptions) -> Fidelity:
    """Put a new profile (a fresh ledger) in front of moto's handlers in this process; moto's
    classes are wrapped once, however often this is called."""
    global _ACTIVE
    with _INSTALL_LOCK:
        if not _PATCHES:
            _apply_patches()
        _ACTIVE = Fidelity(options)
        return _ACTIVE


def uninstall() -> None:
    """moto as it was (a no-op when nothing is installed)."""
    global _ACTIVE
    from local import moto_patches

    with _INSTALL_LOCK:
        _ACTIVE = None
        while _PATCHES:
            owner, name, owned, original = _PATCHES.pop()
            if owner is moto_patches:
                moto_patches.set_dynamodb_hook(original)
            elif owned:
                setattr(owner, name, original)
            else:
                delattr(owner, name)


@contextmanager
def installed(options: FidelityOptions | None) -> Iterator[Fidelity | None]:
    """The profile for the block (None: none), then whatever was installed before."""
    global _ACTIVE
    if options is None:
        yield None
        return
    previous = _ACTIVE
    profile = install(options)
    try:
        yield profile
    finally:
        if previous is None:
            uninstall()
        else:
            with _INSTALL_LOCK:
                _ACTIVE = previous
