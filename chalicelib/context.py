"""What every handler works with: settings, the store, the AWS clients and a clock, built lazily
once per process. Domain code takes a Context and nothing global, so a test swaps any part
(`dataclasses.replace(ctx, clock=...)`, `aws=AwsClients(factory=...)`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

from chalicelib.aws import AwsClients
from chalicelib.settings import Settings, get_settings, reset_settings
from chalicelib.store import Store


@dataclass(frozen=True)
class Context:
    settings: Settings
    store: Store
    aws: AwsClients = field(default_factory=AwsClients)
    clock: Callable[[], float] = field(default=time.time)
    # Seconds left in this Lambda invocation (None: not in one), for work that must stop in
    # time and continue in another invocation (the merge, `chalicelib.merge`).
    time_left: Callable[[], float] | None = None


def in_invocation(ctx: Context, lambda_context: Any) -> Context:
    """`ctx` knowing the time left in the invocation `lambda_context` (Lambda's context
    object, or Chalice's local one) stands for."""
    if lambda_context is None or not hasattr(lambda_context, "get_remaining_time_in_millis"):
        return ctx
    return replace(ctx, time_left=lambda: lambda_context.get_remaining_time_in_millis() / 1000)


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
