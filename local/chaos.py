"""Chaos switches for the local stack: what Spot capacity and at-least-once events do to a
mission, on purpose, so the reliability claims can be tested.

- kill a fraction of workers without notice (the process dies and its instance is gone);
- send Spot interruption notices to a fraction (metadata notice, the EventBridge warning to the
  handler app.py registers, then the instance is reclaimed after the notice period);
- deliver every event N times; delay and reorder events;
- make a handler crash once, mid-batch, after its side effects.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field


@dataclass
class ChaosOptions:
    kill_fraction: float = 0.0
    spot_fraction: float = 0.0
    spot_notice_seconds: float = 120.0  # EC2 gives two minutes
    duplicate: int = 1  # deliveries of each event
    max_delay_seconds: float = 0.0  # each batch waits up to this long, records shuffled
    crash_once: tuple[str, ...] = ()  # handler names that crash once, mid-batch
    # When a doomed worker meets its fate, after it starts (seconds, uniform).
    fate_window: tuple[float, float] = (1.0, 4.0)
    seed: int = 1

    @property
    def active(self) -> bool:
        return bool(
            self.kill_fraction
            or self.spot_fraction
            or self.duplicate > 1
            or self.max_delay_seconds
            or self.crash_once
        )


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

    def should_crash(self, handler: str) -> bool:
        with self._lock:
            if handler in self.options.crash_once and handler not in self._crashed:
                self._crashed.add(handler)
                return True
            return False
