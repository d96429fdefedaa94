"""What every handler works with: settings, the store, the AWS clients and a clock, built lazily
once per process. Domain code takes a Context and nothing global, so a test swaps any part
(`dataclasses.replace(ctx, clock=...)`, `aws=AwsClients(factory=...)`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from chalicelib.aws import AwsClients
from chalicelib.settings import Settings, get_settings, reset_settings
from chalicelib.store import Store


@dataclass(frozen=True)
class Context:
    settings: Settings
    store: Store
    aws: AwsClients = field(default_factory=AwsClients)
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
