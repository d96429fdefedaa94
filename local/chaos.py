"""Chaos switches for the local stack: what Spot capacity and at-least-once events do to a
mission, on purpose, so the reliability claims can be tested.

- kill a fraction of workers without notice (the process dies and its instance is gone);
- send Spot interruption notices to a fraction (metadata notice, the EventBridge warning to the
  handler app.py registers, then the instance is reclaimed after the notice period);
- deliver every event N times; delay and reorder events;
- make a handler crash once, mid-batch, after its side effects, on a batch that carries mission
  traffic (a crash on the start-up batch, before any mission, would prove nothing).
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from chalicelib.events import ObjectCreated, SourceEvent, StartRequest, parse_queue_body
from chalicelib.layout import parse_outcome_key


def _starts_or_plans(event: SourceEvent) -> bool:
    # The source queue carries only the source bucket's notifications and start requests.
    return isinstance(event, StartRequest | ObjectCreated)


def _is_outcome(event: SourceEvent) -> bool:
    return isinstance(event, ObjectCreated) and parse_outcome_key(event.key) is not None


# The handlers a crash can hit (app.py's `on_sqs_message` names), each with what counts as
# mission traffic in its batches: a start request or an upload for the scheduler, an outcome
# (a part or a failure marker) for result_processor. Not s3:TestEvent, not a merged result.
CRASHABLE_HANDLERS: dict[str, Callable[[SourceEvent], bool]] = {
    "light_scheduler": _starts_or_plans,
    "result_processor": _is_outcome,
}


class ChaosInvalid(ValueError):
    """A switch out of range; `options` names the ChaosOptions fields at fault."""

    def __init__(self, options: tuple[str, ...], reason: str) -> None:
        super().__init__(f"{' + '.join(options)}: {reason}")
        self.options = options
        self.reason = reason


@dataclass
class ChaosOptions:
    kill_fraction: float = 0.0
    spot_fraction: float = 0.0
    spot_notice_seconds: float = 120.0  # EC2 gives two minutes
    duplicate: int = 1  # deliveries of each event
    max_delay_seconds: float = 0.0  # each batch waits up to this long, records shuffled
    # Handler names (CRASHABLE_HANDLERS) that crash once, mid-batch: on the `crash_on_batch`-th
    # batch that carries mission traffic to that handler (batches without any, such as S3's
    # s3:TestEvent at start-up, are not counted). The records handled before the crash include
    # the first mission record, so the crash always follows real side effects.
    crash_once: tuple[str, ...] = ()
    crash_on_batch: int = 1
    # When a doomed worker meets its fate, after it starts (seconds, uniform).
    fate_window: tuple[float, float] = (1.0, 4.0)
    seed: int = 1

    def __post_init__(self) -> None:
        """Refuse what cannot be meant, so a run never silently tests less than it says."""
        for name in ("kill_fraction", "spot_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # NaN fails too
                raise ChaosInvalid((name,), f"must be a fraction from 0 to 1, not {value}")
        if self.kill_fraction + self.spot_fraction > 1.0:
            total = self.kill_fraction + self.spot_fraction
            raise ChaosInvalid(
                ("kill_fraction", "spot_fraction"),
                f"a worker meets one fate at most: the fractions sum to {total:g}, above 1",
            )
        for name in ("spot_notice_seconds", "max_delay_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ChaosInvalid((name,), f"must be 0 seconds or more, not {value}")
        if self.duplicate < 1:
            raise ChaosInvalid(
                ("duplicate",),
                f"every event is delivered once at least, not {self.duplicate} times",
            )
        if self.crash_on_batch < 1:
            raise ChaosInvalid(("crash_on_batch",), f"counts from 1, not {self.crash_on_batch}")
        unknown = sorted(set(self.crash_once) - set(CRASHABLE_HANDLERS))
        if unknown:
            known = ", ".join(sorted(CRASHABLE_HANDLERS))
            raise ChaosInvalid(("crash_once",), f"unknown handler {unknown[0]!r} (known: {known})")
        low, high = self.fate_window
        if not 0 <= low <= high:
            raise ChaosInvalid(
                ("fate_window",),
                f"must be (low, high) with 0 <= low <= high, not {self.fate_window}",
            )

    @property
    def active(self) -> bool:
        return bool(
            self.kill_fraction
            or self.spot_fraction
            or self.duplicate > 1
            or self.max_delay_seconds
            or self.crash_once
        )


def first_mission_record(handler: str, bodies: Sequence[str]) -> int | None:
    """The position of the first record that carries mission traffic to `handler`, or None.
    A record that does not parse is poison, not mission traffic."""
    carries = CRASHABLE_HANDLERS.get(handler)
    if carries is None:
        return None
    for i, body in enumerate(bodies):
        try:
            events = parse_queue_body(body)
        except ValueError:
            continue
        if any(carries(event) for event in events):
            return i
    return None


@dataclass
class ChaosLedger:
    """What chaos did, for the chaos table."""

    workers_killed: int = 0
    notices_sent: int = 0
    duplicate_deliveries: int = 0
    delayed_batches: int = 0
    handler_crashes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class Chaos:
    """Decisions (seeded, so a run can be repeated) and the ledger of what was done."""

    def __init__(self, options: ChaosOptions) -> None:
        self.options = options
        self.ledger = ChaosLedger()
        self._random = random.Random(options.seed)
        self._lock = threading.Lock()
        self._crashed: set[str] = set()
        self._mission_batches: dict[str, int] = {}

    def fate(self) -> tuple[str | None, float]:
        """For a new worker: None, "kill" or "spot", and when (seconds after it starts)."""
        with self._lock:
            roll = self._random.random()
            when = self._random.uniform(*self.options.fate_window)
        if roll < self.options.kill_fraction:
            return "kill", when
        if roll < self.options.kill_fraction + self.options.spot_fraction:
            return "spot", when
        return None, 0.0

    def delay(self) -> float:
        if not self.options.max_delay_seconds:
            return 0.0
        with self._lock:
            return self._random.uniform(0, self.options.max_delay_seconds)

    def shuffle(self, items: list) -> None:
        if self.options.max_delay_seconds:
            with self._lock:
                self._random.shuffle(items)

    @property
    def crashed(self) -> set[str]:
        """The handlers that have crashed so far."""
        with self._lock:
            return set(self._crashed)

    def crash_point(self, handler: str, bodies: Sequence[str]) -> int | None:
        """How many records of this batch to handle before crashing, or None for no crash.

        Crashes `handler` once, on its `crash_on_batch`-th batch with mission traffic; the
        handled records are half the batch, or more so that they reach the first mission record.
        Each crash is counted in the ledger (`handler_crashes`)."""
        if handler not in self.options.crash_once:
            return None
        first = first_mission_record(handler, bodies)
        if first is None:
            return None
        with self._lock:
            if handler in self._crashed:
                return None
            seen = self._mission_batches.get(handler, 0) + 1
            self._mission_batches[handler] = seen
            if seen < self.options.crash_on_batch:
                return None
            self._crashed.add(handler)
        self.ledger.add(handler_crashes=1)
        return max(first + 1, len(bodies) // 2)
