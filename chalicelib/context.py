"""What every handler works with: settings, the store and a clock, built lazily once per process."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from chalicelib.settings import Settings, get_settings, reset_settings
from chalicelib.store import Store


@dataclass(frozen=True)
class Context:
    settings: Settings
    store: Store
    clock: Callable[[], float] = field(default=time.time)


@lru_cache(maxsize=1)
def get_context() -> Context:
    settings = get_settings()
    return Context(settings=settings, store=Store(settings))


def reset_context() -> None:
    get_context.cache_clear()


def reset_process_state() -> None:
    """Forget cached settings, clients and store (after the environment or the endpoint changed)."""
    from chalicelib import aws, idempotency

    reset_settings()
    aws.reset_clients()
    idempotency.reset()
    reset_context()
