"""The one client factory: lazy, cached, endpoint from the environment, resettable in tests.

boto3 reads `AWS_ENDPOINT_URL` by itself, which is how the embedded AWS (moto) is reached with no
code change. Throttling is absorbed by botocore's adaptive retry mode, not by loops of our own.
Domain code reaches the clients through `Context.aws` (an `AwsClients`), so a test can hand it
others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import boto3
from botocore.config import Config

from chalicelib.settings import get_settings

_RETRY_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 8}, max_pool_connections=32)
_lock = threading.Lock()


@cache
def client(service: str) -> Any:
    # Creating clients is not thread-safe in boto3; the worker uses several threads.
    with _lock:
        return boto3.session.Session().client(
            service, region_name=get_settings().region, config=_RETRY_CONFIG
        )


def reset_clients() -> None:
    """Drop cached clients, e.g. after a test switched the endpoint or started a new moto."""
    client.cache_clear()


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
