"""Every pynamodb model, in one module, private to the store (callers get chalicelib.domain values).

Table names come from settings, which must not be read at import time, so `bind_tables` sets them
(and forgets pynamodb's cached connections) when the store is first built.
"""

from __future__ import annotations

from typing import Any

from pynamodb.attributes import (
    BooleanAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.indexes import GlobalSecondaryIndex, KeysOnlyProjection
from pynamodb.models import Model

from chalicelib.aws import share_session
from chalicelib.settings import Settings
from chalicelib.store.errors import retry_transient


class _RetriesTransient:
    """Every write of a model is retried when DynamoDB says it was not done (a conflict with
    an in-flight transaction, throttling): see `retry_transient`."""

    def update(self, *args: Any, **kwargs: Any) -> Any:
        return retry_transient(lambda: super(_RetriesTransient, self).update(*args, **kwargs))  # type: ignore[misc]

    def save(self, *args: Any, **kwargs: Any) -> Any:
        return retry_transient(lambda: super(_RetriesTransient, self).save(*args, **kwargs))  # type: ignore[misc]

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        return retry_transient(lambda: super(_RetriesTransient, self).delete(*args, **kwargs))  # type: ignore[misc]


class CreatedIndex(GlobalSecondaryIndex["MissionModel"]):
    """Every mission by creation time: the newest missions without a scan. One partition is
    plenty for a team's missions; keys only, so the mission's counter updates never touch it."""

    class Meta:
        index_name = "created-index"
        projection = KeysOnlyProjection()

    listed = UnicodeAttribute(hash_key=True)
    created_at = UTCDateTimeAttribute(range_key=True)


class OwnerIndex(GlobalSecondaryIndex["MissionModel"]):
    """A caller's own missions by creation time (GET /missions for a caller who is not an
    operator). Sparse over `submitted_by`; keys only, like the created index."""

    class Meta:
        index_name = "owner-index"
        projection = KeysOnlyProjection()

    submitted_by = UnicodeAttribute(hash_key=True)
    created_at = UTCDateTimeAttribute(range_key=True)


class CareIndex(GlobalSecondaryIndex["MissionModel"]):
    """Sparse: the missions the sweeper must look at, from creation until their email is sent
    (only they carry `needs_care`). Keeps each sweep proportional to live missions, not to the
    whole history."""

    class Meta:
        index_name = "care-index"
        projection = KeysOnlyProjection()

    needs_care = UnicodeAttribute(hash_key=True)
    mission_id = UnicodeAttribute(range_key=True)


LISTED = "all"
NEEDS_CARE = "yes"


class MissionModel(_RetriesTransient, Model):
    class Meta:
        table_name = "lighthpc-missions"
        billing_mode = "PAY_PER_REQUEST"

    mission_id = UnicodeAttribute(hash_key=True)
    name = UnicodeAttribute()
    status = UnicodeAttribute()
    config_json = UnicodeAttribute()  # the validated MissionConfig, as submitted
    input_key = UnicodeAttribute()
    input_etag = UnicodeAttribute(null=True)
    input_version = UnicodeAttribute(null=True)  # the S3 version planned (versioned bucket)
    input_bytes = NumberAttribute(null=True)
    notify = UnicodeAttribute(null=True)
    # The IAM principal (userArn) that submitted it, "local" without one; null on older items.
    submitted_by = UnicodeAttribute(null=True)
    created_at = UTCDateTimeAttribute()
    started_at = UTCDateTimeAttribute(null=True)
    running_at = UTCDateTimeAttribute(null=True)
    finished_at = UTCDateTimeAttribute(null=True)
    planning_lease_until = NumberAttribute(null=True)  # epoch seconds
    n_total = NumberAttribute(default=0)
    n_lines = NumberAttribute(null=True)  # lines mode: the input's line count, for the plan
    # Claim cursor: workers ADD 1 to take the next never-claimed transaction in O(1).
    next_index = NumberAttribute(default=0)
    n_succeeded = NumberAttribute(default=0)
    n_failed = NumberAttribute(default=0)
    n_instances = NumberAttribute(default=0)
    relaunches = NumberAttribute(default=0)
    # Retry bookkeeping, so status counts need no query: transactions sent back for another
    # attempt, and retries claimed again (waiting = requeued - reclaimed). Only failures and
    # hand-backs write them, never the normal path of a transaction.
    n_requeued = NumberAttribute(default=0)
    n_reclaimed = NumberAttribute(default=0)
    relaunched_at = UTCDateTimeAttribute(null=True)  # the last relaunch: its instances boot
    # Interrupted instances already replaced: a redelivered Spot warning replaces nothing twice.
    replaced_instances = UnicodeSetAttribute(null=True)
    launch_errors = UnicodeAttribute(null=True)
    instance_seconds = NumberAttribute(default=0)
    estimated_cost = NumberAttribute(default=0)  # USD, from chalicelib.pricing
    result_key = UnicodeAttribute(null=True)
    error = UnicodeAttribute(null=True)  # why the mission failed as a whole (bad input, ...)
    cancelled_by = UnicodeAttribute(null=True)  # the caller whose DELETE cancelled it
    notify_lease_until = NumberAttribute(null=True)
    notified_at = UTCDateTimeAttribute(null=True)
    # The merge (chalicelib.merge): who holds it and until when, and where it stands (JSON).
    merge_owner = UnicodeAttribute(null=True)
    merge_lease_until = NumberAttribute(null=True)  # epoch seconds
    merge_checkpoint = UnicodeAttribute(null=True)
    merge_claims = NumberAttribute(null=True)  # how many invocations took the merge's lease
    # Stages (chalicelib.stages): where the input is read (null: the source bucket), whose
    # reduce this is, the merged parts a reduce reads, the missions fed by this one's result,
    # and the pipeline it belongs to (JSON, the same on every stage).
    input_bucket = UnicodeAttribute(null=True)
    reduce_of = UnicodeAttribute(null=True)
    concatenation_key = UnicodeAttribute(null=True)
    downstream = UnicodeSetAttribute(null=True)
    pipeline_json = UnicodeAttribute(null=True)
    listed = UnicodeAttribute(default=LISTED)
    needs_care = UnicodeAttribute(null=True)  # NEEDS_CARE until notified_at is set

    by_creation = CreatedIndex()
    by_owner = OwnerIndex()
    needing_care = CareIndex()


class InstanceUsageModel(_RetriesTransient, Model):
    """One instance's usage, on the mission table under the key `<mission id>/<instance id>`
    (never a mission id: those match `MISSION_ID_PATTERN`, which has no slash). Written once,
    by whoever accounts the instance first: its agent when it exits, or the control side at
    the mission's end for an instance still alive. So an instance that reported just before
    the end, and that DescribeInstances still shows running (it is eventually consistent), is
    not counted again by its age. No index sees it (it has none of their keys)."""

    class Meta:
        table_name = "lighthpc-missions"
        billing_mode = "PAY_PER_REQUEST"

    mission_id = UnicodeAttribute(hash_key=True)  # "<mission id>/<instance id>"
    instance_seconds = NumberAttribute()
    estimated_cost = NumberAttribute()
    accounted_by = UnicodeAttribute()  # "agent" or "control"


def instance_usage_key(mission_id: str, instance_id: str) -> str:
    return f"{mission_id}/{instance_id}"


class RetryIndex(GlobalSecondaryIndex["TransactionModel"]):
    """Sparse index of transactions waiting for another attempt (only they carry retry_rank)."""

    class Meta:
        index_name = "retry-index"
        projection = KeysOnlyProjection()

    mission_id = UnicodeAttribute(hash_key=True)
    retry_rank = NumberAttribute(range_key=True)


class LeaseIndex(GlobalSecondaryIndex["TransactionModel"]):
    """Sparse index of leased (running) transactions by lease expiry: the sweeper's work list."""

    class Meta:
        index_name = "lease-index"
        projection = KeysOnlyProjection()

    mission_id = UnicodeAttribute(hash_key=True)
    lease_expires_at = NumberAttribute(range_key=True)


class TransactionModel(_RetriesTransient, Model):
    class Meta:
        table_name = "lighthpc-transactions"
        billing_mode = "PAY_PER_REQUEST"

    mission_id = UnicodeAttribute(hash_key=True)
    index = NumberAttribute(range_key=True)
    status = UnicodeAttribute()
    start = NumberAttribute()
    end = NumberAttribute()
    attempts = NumberAttribute(default=0)
    # Claims so far: +1 on every claim, never down (a hand-back gives the attempt back, not the
    # claim). The holder's claim is the one whose outcome counts.
    claims = NumberAttribute(null=True)
    retry_rank = NumberAttribute(null=True)
    lease_owner = UnicodeAttribute(null=True)
    lease_expires_at = NumberAttribute(null=True)
    exit_code = NumberAttribute(null=True)
    error = UnicodeAttribute(null=True)
    started_at = UTCDateTimeAttribute(null=True)
    finished_at = UTCDateTimeAttribute(null=True)
    run_seconds = NumberAttribute(null=True)
    part_key = UnicodeAttribute(null=True)
    counted = BooleanAttribute(null=True)  # set once by result_processor: counts exactly once
    # A block: the item covers indexes index .. index + span - 1 (chalicelib.domain.Transaction).
    span = NumberAttribute(null=True)  # null: 1

    retry_index = RetryIndex()
    lease_index = LeaseIndex()


class InputModel(_RetriesTransient, Model):
    """Which mission holds this input key: from its config until it ends, so no second mission
    binds a key that a live one waits for or still reads."""

    class Meta:
        table_name = "lighthpc-inputs"
        billing_mode = "PAY_PER_REQUEST"

    input_key = UnicodeAttribute(hash_key=True)
    mission_id = UnicodeAttribute()


ALL_MODELS: tuple[type[Model], ...] = (MissionModel, TransactionModel, InputModel)


def bind_tables(settings: Settings) -> None:
    names = {
        MissionModel: settings.mission_table,
        TransactionModel: settings.transaction_table,
        InputModel: settings.input_table,
        InstanceUsageModel: settings.mission_table,  # its items live beside the missions
    }
    for model, table in names.items():
        model.Meta.table_name = table
        model.Meta.region = settings.region
        model._connection = None  # pynamodb caches the connection (and the table name) per class
        share_session(model._get_connection().connection)
