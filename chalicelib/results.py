"""result_processor ("RsltProc"): count each outcome once; the completing event merges and mails.

Idempotency here is by conditional writes (see `Store.count_outcome`, `Store.finish_mission`,
`Store.claim_notification`): a part stored twice is counted once, a late event for a finished
mission changes nothing, and exactly one holder sends the email.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError, FlexibleChecksumError

from chalicelib.capacity import mission_instances
from chalicelib.context import Context
from chalicelib.domain import Mission, Transaction, Usage, utc
from chalicelib.events import ObjectCreated, SourceEvent
from chalicelib.layout import (
    SHA256_METADATA,
    FailureMarker,
    PartStamp,
    manifest_key,
    parse_outcome_key,
    result_key,
)
from chalicelib.notify import MAX_FAILURES_LISTED, FailedTransaction, MissionReport, publish
from chalicelib.observability import MetricUnit, bind_mission, count, logger, metrics
from chalicelib.pricing import estimated_cost
from chalicelib.receipt import (
    CONTENT_TYPE,
    ManifestWriter,
    MergedPart,
    b64_sha256,
    full_object_checksum,
    part_problem,
)
from chalicelib.states import MissionStatus, TransactionStatus, mission_outcome

NOTIFY_LEASE_SECONDS = 120
_MERGE_TRANSFER = TransferConfig(multipart_chunksize=16 * 1024**2, max_concurrency=4)


def handle_result_object(ctx: Context, obj: SourceEvent) -> None:
    if not isinstance(obj, ObjectCreated):
        return  # start requests belong to the scheduler's queue
    if obj.bucket != ctx.settings.result_bucket:
        logger.warning("event for another bucket ignored", extra={"bucket": obj.bucket})
        return
    outcome = parse_outcome_key(obj.key)
    if outcome is None:
        return  # merged results and anything else in the bucket are not outcomes
    bind_mission(outcome.mission_id)
    failure = None if outcome.succeeded else _read_failure_marker(ctx, obj.key)
    counted = ctx.store.transactions.count_outcome(outcome, obj.key, failure)
    if counted:
        count("TransactionsSucceeded" if outcome.succeeded else "TransactionsFailed")
    logger.info(
        "outcome counted" if counted else "outcome already counted",
        extra={"index": outcome.index, "succeeded": outcome.succeeded},
    )
    settle(ctx, outcome.mission_id)


def settle(ctx: Context, mission_id: str) -> None:
    """Finish the mission if every transaction is in, and send its email if not yet sent.

    Safe to call any number of times, from any event: only complete missions are finished, a
    finished mission is finished once, and its email is sent by one holder.
    """
    mission = ctx.store.missions.get(mission_id)
    if mission.status is MissionStatus.RUNNING:
        final = mission_outcome(mission.succeeded, mission.failed, mission.total)
        if final is None:
            return
        merged = merge_parts(ctx, mission) if mission.succeeded else None
        ctx.store.missions.finish(mission, final, merged, usage(ctx, mission), ctx.clock())
        mission = ctx.store.missions.get(mission_id)
    if mission.terminal and mission.notified_at is None:
        send_report(ctx, mission)


def send_report(ctx: Context, mission: Mission) -> None:
    now = ctx.clock()
    if not ctx.store.missions.claim_notification(mission.mission_id, now, NOTIFY_LEASE_SECONDS):
        return
    report = build_report(ctx, mission)
    message_id = publish(ctx.aws.sns, ctx.settings.topic_arn, report)
    ctx.store.missions.mark_notified(mission.mission_id, ctx.clock())
    count("EmailsSent")
    logger.info(
        "completion email published", extra={"message_id": message_id, "status": report.status}
    )


def build_report(ctx: Context, mission: Mission) -> MissionReport:
    """The email's facts. Only the first MAX_FAILURES_LISTED failures are kept (the rest are
    counted): a mission may fail many thousands, each with a stderr tail, and the email lists
    no more anyway."""
    failures: list[FailedTransaction] = []
    more_failures = 0
    for t in ctx.store.transactions.of(mission.mission_id):
        if t.status is not TransactionStatus.FAILED:
            continue
        if len(failures) >= MAX_FAILURES_LISTED:
            more_failures += 1
            continue
        failures.append(
            FailedTransaction(
                index=t.index,
                start=t.start,
                end=t.end,
                attempts=t.attempts,
                exit_code=t.exit_code,
                error=t.error,
            )
        )
    duration = None
    if mission.finished_at is not None:
        began = mission.started_at or mission.created_at
        duration = (mission.finished_at - began).total_seconds()
    bucket = ctx.settings.result_bucket
    manifest_uri, manifest_sha256 = receipt_of(ctx, mission)
    return MissionReport(
        mission_id=mission.mission_id,
        name=mission.name,
        status=mission.status.value,
        total=mission.total,
        succeeded=mission.succeeded,
        failed=mission.failed,
        duration_seconds=duration,
        instance_seconds=mission.instance_seconds,
        estimated_cost=mission.estimated_cost,
        instances=mission.instances,
        result_uri=f"s3://{bucket}/{mission.result_key}" if mission.result_key else None,
        error=mission.error,
        failures=failures,
        notify=mission.notify,
        submitted_by=mission.submitted_by,
        more_failures=more_failures,
        manifest_uri=manifest_uri,
        manifest_sha256=manifest_sha256,
    )


def usage(ctx: Context, mission: Mission) -> Usage:
    """What exited workers reported, plus the age of the instances still running (the last
    workers are typically still exiting at completion)."""
    now = ctx.clock()
    seconds, cost = mission.instance_seconds, mission.estimated_cost
    for instance in mission_instances(ctx.aws.ec2, mission.mission_id, ["pending", "running"]):
        age = max(0.0, now - instance["LaunchTime"].timestamp())
        market = instance.get("InstanceLifecycle") or "on-demand"
        seconds += age
        cost += estimated_cost(instance.get("InstanceType"), market, age)
    return Usage(instance_seconds=seconds, estimated_cost=cost)


def merge_parts(ctx: Context, mission: Mission) -> str | None:
    """Concatenate the succeeded parts in index order into one object, streaming, and write its
    receipt next to it (`chalicelib.receipt`), built as the parts go by.

    Each part is checked against its worker's stamp (and S3's own checksum) as it is read. One
    that does not match is never merged: the mission fails with the reason, and None is
    returned. A rerun (a redelivered event) writes the same result; the first receipt written
    stays (If-None-Match), so the receipt a mission has never changes."""
    began = time.monotonic()
    s3 = ctx.aws.s3
    bucket = ctx.settings.result_bucket
    target = result_key(mission.mission_id)
    with tempfile.SpooledTemporaryFile(max_size=_MANIFEST_IN_MEMORY_BYTES) as manifest:
        receipt = ManifestWriter(manifest.write)
        receipt.mission(
            mission,
            source_bucket=ctx.settings.source_bucket,
            result_bucket=bucket,
            result_key=target,
        )
        merged = _Concatenation(_checked_parts(ctx, mission, receipt))
        try:
            s3.upload_fileobj(
                merged,
                bucket,
                target,
                ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                Config=_MERGE_TRANSFER,
            )
        except _PartMismatch as e:
            _refuse_merge(ctx, mission, e)
            return None
        receipt.result(
            key=target,
            size=merged.size,
            sha256=merged.sha256,
            usage=usage(ctx, mission),
            merged_at=utc(ctx.clock()),
        )
        _put_manifest(ctx, mission.mission_id, manifest, receipt.sha256)
    metrics.add_metric(name="MergeSeconds", unit=MetricUnit.Seconds, value=time.monotonic() - began)
    return target


def receipt_of(ctx: Context, mission: Mission) -> tuple[str | None, str | None]:
    """The manifest's s3:// URI and sha256 (hex) for the email; (None, None) without a result,
    and no sha256 if the manifest is not there."""
    if not mission.result_key:
        return None, None
    bucket, key = ctx.settings.result_bucket, manifest_key(mission.mission_id)
    try:
        head = ctx.aws.s3.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
            raise
        return f"s3://{bucket}/{key}", None
    return f"s3://{bucket}/{key}", head.get("Metadata", {}).get(SHA256_METADATA)


# A receipt line is ~330 bytes: 12,000 transactions' receipt stays in memory, a larger one is
# spooled to the function's /tmp.
_MANIFEST_IN_MEMORY_BYTES = 4 * 1024**2


class _PartMismatch(Exception):
    def __init__(self, txn: Transaction, reason: str) -> None:
        super().__init__(f"transaction {txn.index}: part {txn.part_key}: {reason}")
        self.txn = txn
        self.reason = reason


def _checked_parts(
    ctx: Context, mission: Mission, receipt: ManifestWriter
) -> Iterator[_CheckedPart]:
    """The succeeded parts' bodies in index order, each entering the receipt once read to its
    end; the other transactions enter it as they go by. Lazy: one GetObject open at a time."""
    s3, bucket = ctx.aws.s3, ctx.settings.result_bucket
    for t in ctx.store.transactions.of(mission.mission_id):
        if t.status is TransactionStatus.SUCCEEDED and t.part_key:
            # ChecksumMode: botocore checks the bytes against S3's full-object checksum too.
            response = s3.get_object(Bucket=bucket, Key=t.part_key, ChecksumMode="ENABLED")
            yield _CheckedPart(t, response, receipt)
        else:
            receipt.transaction(t, None)


class _CheckedPart:
    """One part's body as the merge reads it: hashed on the way; at its end, checked against
    its worker's stamp and entered in the receipt (a mismatch raises `_PartMismatch`)."""

    def __init__(self, txn: Transaction, response: dict[str, Any], receipt: ManifestWriter):
        self._txn = txn
        self._body = response["Body"]
        self._stamp = PartStamp.from_metadata(response.get("Metadata") or {})
        self._s3_checksum = full_object_checksum(response)
        self._receipt = receipt
        self._digest = hashlib.sha256()
        self._size = 0
        self._ended = False

    def read(self, size: int) -> bytes:
        try:
            chunk = self._body.read(size)
        except FlexibleChecksumError as e:
            raise _PartMismatch(self._txn, f"S3's checksum refused its bytes ({e})") from e
        if chunk:
            self._digest.update(chunk)
            self._size += len(chunk)
        elif not self._ended:
            self._ended = True
            self._end()
        return bytes(chunk)

    def _end(self) -> None:
        sha256 = self._digest.hexdigest()
        problem = part_problem(self._stamp, sha256, self._s3_checksum)
        if problem is not None or self._stamp is None:
            raise _PartMismatch(self._txn, problem or "no stamp")
        key = self._txn.part_key or ""
        self._receipt.transaction(self._txn, MergedPart(key, self._size, sha256, self._stamp))

    def close(self) -> None:
        self._body.close()


def _refuse_merge(ctx: Context, mission: Mission, e: _PartMismatch) -> None:
    """A part that is not what its worker uploaded is never merged, nor silently dropped: the
    mission fails, naming it (RUNNING -> FAILED as a whole, the transition a deadline uses)."""
    reason = (
        f"transaction {e.txn.index}: its part {e.txn.part_key} is not what its worker uploaded"
        f" ({e.reason}); nothing was merged"
    )
    logger.error("part refused by the merge", extra={"index": e.txn.index, "reason": e.reason})
    count("PartsRefused")
    ctx.store.missions.time_out(mission, reason, ctx.clock())


def _put_manifest(ctx: Context, mission_id: str, manifest: BinaryIO, sha256: str) -> None:
    """One PUT (S3 checks the body against the sha256 sent); its sha256 also in its metadata.
    If-None-Match: the first receipt written stays, whatever reruns."""
    manifest.seek(0)
    try:
        ctx.aws.s3.put_object(
            Bucket=ctx.settings.result_bucket,
            Key=manifest_key(mission_id),
            Body=manifest,
            ContentType=CONTENT_TYPE,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=b64_sha256(sha256),
            Metadata={SHA256_METADATA: sha256},
            IfNoneMatch="*",
        )
    except ClientError as e:
        # 412: a receipt is there already; 409: another writer's PUT is in flight.
        if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") not in (409, 412):
            raise
        logger.info("receipt already written; kept")


class _Concatenation(io.RawIOBase):
    """A read-only stream over several bodies, one after the other, never all in memory; it
    hashes and counts what it hands out (the result's size and sha256)."""

    def __init__(self, bodies: Iterable[Any]) -> None:
        self._bodies: Iterator[Any] = iter(bodies)
        self._current: Any = None
        self._digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            if self._current is None:
                self._current = next(self._bodies, None)
                if self._current is None:
                    return 0
            chunk = self._current.read(len(buffer))
            if chunk:
                buffer[: len(chunk)] = chunk
                self._digest.update(chunk)
                self.size += len(chunk)
                return len(chunk)
            self._current.close()
            self._current = None

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def _read_failure_marker(ctx: Context, key: str) -> FailureMarker:
    body = ctx.aws.s3.get_object(Bucket=ctx.settings.result_bucket, Key=key)["Body"].read()
    return FailureMarker.from_bytes(body)
