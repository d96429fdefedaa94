"""The one client factory: lazy, cached, endpoint from the environment, resettable in tests.

boto3 reads `AWS_ENDPOINT_URL` by itself, which is how the embedded AWS (moto) is reached with no
code change. Throttling is absorbed by botocore's adaptive retry mode, not by loops of our own.
Domain code reaches the clients through `Context.aws` (an `AwsClients`), so a test can hand it
others.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from botocore.config import Config

from chalicelib.settings import get_settings

_RETRY_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 8}, max_pool_connections=32)
# Creating clients is not thread-safe in botocore; the worker uses several threads. Reentrant:
# `client` below holds it (its cache fills once) around the session's `create_client`, which
# takes it too (for pynamodb's clients, built by pynamodb).
_lock = threading.RLock()


class _Session(botocore.session.Session):
    """A botocore session whose clients are created one at a time, whoever asks."""

    def create_client(self, *args: Any, **kwargs: Any) -> Any:
        with _lock:
            return super().create_client(*args, **kwargs)


@cache
def _botocore_session() -> botocore.session.Session:
    """One session per process: a session loads botocore's endpoint and service data once (a
    new session per client reloads it: 160 ms for a DynamoDB client, 9 ms from a shared one)."""
    return _Session()


@cache
def _session() -> boto3.session.Session:
    return boto3.session.Session(botocore_session=_botocore_session())


@cache
def client(service: str) -> Any:
    with _lock:
        return _session().client(service, region_name=get_settings().region, config=_RETRY_CONFIG)


class _OneSessionForEveryThread:
    """Stands in for a pynamodb connection's per-thread session holder (`_local`): every thread
    finds this process's session in it."""

    def __init__(self, session: botocore.session.Session) -> None:
        self.session = session


def share_session(connection: Any) -> None:
    """Have a pynamodb connection build its client (once, on first use, as before) from this
    process's session rather than from a new session of its own. pynamodb keeps a session per
    thread only because creating clients is not thread-safe, which `_Session` sees to."""
    connection._local = _OneSessionForEveryThread(_botocore_session())


def prefer_service_models(directory: Path) -> None:
    """Have this process's clients read service models from `directory` before botocore's own
    (its data path, as `AWS_DATA_PATH` sets it, which stays searched next). Call before the
    first client: the session reads the path once."""
    session = _botocore_session()
    others = session.get_config_variable("data_path")
    session.set_config_variable(
        "data_path", os.pathsep.join(filter(None, [str(directory), others]))
    )


def reset_clients() -> None:
    """Drop cached clients, e.g. after a test switched the endpoint or started a new moto."""
    client.cache_clear()
    _session.cache_clear()
    _botocore_session.cache_clear()  # it caches the credentials it found


@dataclass(frozen=True)
class AwsClients:
    """The clients domain code uses, each built on first use by `factory`."""

    factory: Callable[[str], Any] = client
    # Queue name -> URL, looked up once per process (each Lambda function's own).
    queue_urls: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def s3(self) -> Any:
        return self.factory("s3")

    @property
    def ec2(self) -> Any:
        return self.factory("ec2")

    @property
    def sns(self) -> Any:
        return self.factory("sns")

    @property
    def sqs(self) -> Any:
        return self.factory("sqs")

    @property
    def dynamodb(self) -> Any:
        return self.factory("dynamodb")

    def queue_url(self, name: str) -> str:
        if name not in self.queue_urls:
            self.queue_urls[name] = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
        return self.queue_urls[name]
