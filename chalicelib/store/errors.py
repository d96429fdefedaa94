"""The store's errors, and the one place pynamodb's and botocore's errors become them.

Callers see `NotFound`, `Conflict` (a condition said no: someone else got there first) and
`StoreError`; never pynamodb or botocore exceptions, and never a match on message text.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import DoesNotExist, PynamoDBException, TransactWriteError

from chalicelib.errors import ApiError

_CONDITION_FAILED = "ConditionalCheckFailedException"
# Answers that mean "not done, try again": a write that met another in-flight transaction, or
# throttling that outlasted botocore's own retries (a hot item). botocore never retries the
# conflicts (../shared/AWS_LIMITS.md, DynamoDB: "Not retried: TransactionConflictException").
_TRANSIENT = frozenset(
    {
        "TransactionConflictException",
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "InternalServerError",
    }
)
_TRANSIENT_REASONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
)
RETRY_ATTEMPTS = 6
RETRY_BASE_SECONDS = 0.05
RETRY_CAP_SECONDS = 2.0
T = TypeVar("T")


class StoreError(RuntimeError):
    pass


class NotFound(StoreError, ApiError):
    STATUS_CODE = 404


class Conflict(StoreError, ApiError):
    """A conditional write was refused: the item is not in the state the caller expected."""

    STATUS_CODE = 409


class InputBusy(Conflict):
    def __init__(self, input_key: str, mission_id: str | None) -> None:
        super().__init__(f"input {input_key!r} is held by mission {mission_id} until it ends")
        self.input_key = input_key
        self.mission_id = mission_id

    def body(self) -> dict[str, Any]:
        return {**super().body(), "mission_id": self.mission_id}


def _condition_failed(error: PynamoDBException) -> bool:
    if isinstance(error, TransactWriteError):
        return any(
            r is not None and r.code == "ConditionalCheckFailed"
            for r in (error.cancellation_reasons or [])
        )
    return error.cause_response_code == _CONDITION_FAILED


def _transient(error: Exception) -> bool:
    if isinstance(error, TransactWriteError):
        codes = {r.code for r in (error.cancellation_reasons or []) if r is not None}
        return bool(codes & _TRANSIENT_REASONS) and "ConditionalCheckFailed" not in codes
    return isinstance(error, PynamoDBException) and error.cause_response_code in _TRANSIENT


def retry_transient(write: Callable[[], T], sleep: Callable[[float], None] = time.sleep) -> T:
    """`write()`, tried again with full-jitter exponential backoff while DynamoDB answers that
    it was not done (a conflict, throttling): safe, as nothing was written and the write's
    condition is checked again. A refused condition is an answer, never retried."""
    for attempt in range(RETRY_ATTEMPTS - 1):
        try:
            return write()
        except (PynamoDBException, TransactWriteError) as e:
            if not _transient(e):
                raise
            sleep(random.uniform(0, min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2**attempt)))
    return write()


@contextmanager
def translated(
    action: str, *, missing: str | None = None, refused: str | None = None
) -> Iterator[None]:
    """Run one store operation; its errors leave as NotFound, Conflict or StoreError.

    `action` completes "could not ..."; `missing` and `refused` are the messages of a missing
    item and of a condition that said no.
    """
    try:
        yield
    except DoesNotExist as e:
        raise NotFound(missing or f"not found: {action}") from e
    except PynamoDBException as e:
        if _condition_failed(e):
            raise Conflict(refused or f"refused: {action}") from e
        raise StoreError(f"could not {action}: {e}") from e
    except (BotoCoreError, ClientError) as e:
        raise StoreError(f"could not {action}: {e}") from e


@dataclass
class Write:
    applied: bool = True


@contextmanager
def conditional(action: str) -> Iterator[Write]:
    """A conditional write whose refusal is an answer, not an error: `.applied` says which.

    Most of the store's writes are races decided by a condition (exactly one planner, one
    counter, one email); losing one is normal, so it is reported, not raised.
    """
    write = Write()
    try:
        with translated(action):
            yield write
    except Conflict:
        write.applied = False
