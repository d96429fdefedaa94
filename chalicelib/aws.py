"""The one client factory: lazy, cached, endpoint from the environment, resettable in tests.

boto3 reads `AWS_ENDPOINT_URL` by itself, which is how the embedded AWS (moto) is reached with no
code change. Throttling is absorbed by botocore's adaptive retry mode, not by loops of our own.
"""

from __future__ import annotations

import threading
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


def s3() -> Any:
    return client("s3")


def ec2() -> Any:
    return client("ec2")


def sns() -> Any:
    return client("sns")


def sqs() -> Any:
    return client("sqs")


@cache
def queue_url(name: str) -> str:
    return sqs().get_queue_url(QueueName=name)["QueueUrl"]


def reset_clients() -> None:
    """Drop cached clients, e.g. after a test switched the endpoint or started a new moto."""
    client.cache_clear()
    queue_url.cache_clear()
