"""`Idempotency-Key` for POST /missions, through Powertools Idempotency.

A client that times out on a submission and retries must not start the mission twice. With the
header, the first request's answer is stored (DynamoDB, the stage's idempotency table, expiring
after a day) and a retry with the same key and the same body gets that answer again; the same key
with another body is a conflict, and so is a retry while the first is still running. Keys are
per caller: two callers cannot collide. Errors (a 400, a 409) are not stored, so a corrected
request may reuse its key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)

from chalicelib.config import FieldError, RequestInvalid
from chalicelib.store import Conflict

HEADER = "Idempotency-Key"
KEEP_ANSWERS_SECONDS = 24 * 3600
_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@cache
def _persistence(table: str, dynamodb: Any) -> DynamoDBPersistenceLayer:
    # Built on first use with the project's client (endpoint, retries), one per table.
    return DynamoDBPersistenceLayer(table_name=table, boto3_client=dynamodb)


def reset() -> None:
    _persistence.cache_clear()


def answer_once(
    table: str,
    dynamodb: Any,
    key: str | None,
    caller: str,
    body: bytes | str | None,
    answer: Callable[[], dict[str, Any]],
    lambda_context: Any = None,
) -> dict[str, Any]:
    """`answer()`, or the stored answer of an earlier request with the same key and body."""
    if key is None:
        return answer()
    if not _KEY.fullmatch(key):
        reason = "1 to 128 characters: letters, digits, '.', '_', ':' or '-'"
        raise RequestInvalid([FieldError(HEADER, reason)])
    raw = body.encode() if isinstance(body, str) else (body or b"")
    request = {"caller": caller, "key": key, "body_sha256": hashlib.sha256(raw).hexdigest()}
    config = IdempotencyConfig(
        event_key_jmespath="[caller, key]",
        payload_validation_jmespath="body_sha256",
        expires_after_seconds=KEEP_ANSWERS_SECONDS,
    )
    if lambda_context is not None:
        # Lets a retry take over from a request whose Lambda died mid-way, once its time is up,
        # instead of waiting for the record to expire.
        config.register_lambda_context(lambda_context)

    @idempotent_function(
        data_keyword_argument="request",
        persistence_store=_persistence(table, dynamodb),
        config=config,
    )
    def submit_once(request: dict[str, str]) -> dict[str, Any]:
        return answer()

    try:
        return submit_once(request=request)
    except IdempotencyValidationError as e:
        raise Conflict(f"this {HEADER} was used with a different request body") from e
    except IdempotencyAlreadyInProgressError as e:
        raise Conflict(f"a request with this {HEADER} is still in progress; retry") from e
