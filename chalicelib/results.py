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
from collections import Counter
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
from chalicelib.states import MissionStatus, TransactionStatus, mission_outcome, shown_status

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
    if mission.status is MissionStatus.CANCELLED:
        # Its email waits until its figures are final (`cancel_settled`): the cancel or the
        # sweeper sends it. A part arriving after the cancel changes nothing.
        return
    if mission.terminal and mission.notified_at is None:
        send_report(ctx, mission)


# A cancel's email waits at least this long after the cancel: what the cancel could not see yet
# has then shown up and been settled by a sweep (a lease claimed just before it: the lease index
# is a GSI; an instance launched just before it: DescribeInstances is eventually consistent),
# and every live worker has looked at its mission or renewed its lease (`cancel_quiet_seconds`).
CANCEL_QUIET_LEASE_FRACTION = 1 / 3  # of LEASE_SECONDS: one heartbeat period
# ... and goes out this long after the cancel at the latest, whatever is still winding down.
CANCEL_EMAIL_DEADLINE_SECONDS = 600.0


def cancel_quiet_seconds(ctx: Context) -> float:
    return ctx.settings.lease_seconds * CANCEL_QUIET_LEASE_FRACTION


def cancel_settled(ctx: Context, mission: Mission, busy: bool) -> bool:
    """Whether a cancelled mission's figures are final, so that its one email may go out.

    The counts are final at the cancel itself (counting needs RUNNING); the usage once its
    instances are stopped and accounted (`stop_instances`). So: a mission cancelled before it
    began planning (nothing launched, nothing claimed) at once; otherwise once the quiet period
    has passed and a wind-down (`busy`: it stopped or settled something) found nothing left;
    and by the deadline in any case.
    """
    if mission.started_at is None:
        return True
    ended = (mission.finished_at or mission.created_at).timestamp()
    since = ctx.clock() - ended
    if since >= CANCEL_EMAIL_DEADLINE_SECONDS:
        return True
    return since >= cancel_quiet_seconds(ctx) and not busy


def stop_instances(ctx: Context, mission: Mission) -> list[str]:
    """Terminate the live instances of a mission that ended, and account their usage: their age
    now (EC2 bills no further), since their agents' own reports are refused from here on
    (`add_instance_usage`). Only the instances this call moved out of pending/running count, so
    two stoppers at once account each once. Returns their ids."""
    ec2, now = ctx.aws.ec2, ctx.clock()
    alive = {
        i["InstanceId"]: i
        for i in mission_instances(ec2, mission.mission_id, ["pending", "running"])
    }
    ids, stopped = list(alive), []
    for start in range(0, len(ids), 1000):  # TerminateInstances takes at most 1000 ids
        answer = ec2.terminate_instances(InstanceIds=ids[start : start + 1000])
        stopped += [
            t["InstanceId"]
            for t in answer.get("TerminatingInstances", [])
            if t.get("PreviousState", {}).get("Name") in ("pending", "running")
        ]
    if stopped:
        used = _age_of([alive[i] for i in stopped if i in alive], now)
        ctx.store.missions.account_stopped_instances(
            mission.mission_id, used.instance_seconds, used.estimated_cost
        )
    return stopped


def transaction_counts(mission: Mission) -> dict[str, int]:
    """Transactions per status, as GET /missions/{id} and the email show them, from the mission
    item alone (O(1) at any size: no transaction is read). SUCCEEDED and FAILED are the counted
    outcomes; PENDING the never-claimed plus the retries waiting; RUNNING the rest, claimed and
    not yet counted (an outcome whose event is still on its way included). A cancelled
    mission's are final: what counted before the cancel, and the rest CANCELLED
    (`shown_status`)."""
    T = TransactionStatus
    counts: Counter[TransactionStatus] = Counter(
        {T.SUCCEEDED: mission.succeeded, T.FAILED: mission.failed}
    )
    if mission.status is MissionStatus.CANCELLED:
        counts[T.CANCELLED] = mission.remaining
    else:
        handed_out = min(mission.handed_out, mission.total)
        counts[T.PENDING] = mission.total - handed_out + mission.waiting
        counts[T.RUNNING] = max(0, handed_out - mission.waiting - mission.counted)
    return {s.value: counts.get(s, 0) for s in TransactionStatus} | {"total": mission.total}


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
        if shown_status(t.status, t.counted, mission.status) is not TransactionStatus.FAILED:
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
        cancelled=transaction_counts(mission)[TransactionStatus.CANCELLED.value]
        if mission.status is MissionStatus.CANCELLED
        else 0,
        cancelled_by=mission.cancelled_by,
        cancelled_at=mission.finished_at if mission.status is MissionStatus.CANCELLED else None,
        manifest_uri=manifest_uri,
        manifest_sha256=manifest_sha256,
    )


def usage(ctx: Context, mission: Mission) -> Usage:
    """What exited workers reported, plus the age of the instances still running (the last
    workers are typically still exiting at completion)."""
    alive = mission_instances(ctx.aws.ec2, mission.mission_id, ["pending", "running"])
    running = _age_of(alive, ctx.clock())
    return Usage(
        instance_seconds=mission.instance_seconds + running.instance_seconds,
        estimated_cost=mission.estimated_cost + running.estimated_cost,
    )


def _age_of(instances: Iterable[dict[str, Any]], now: float) -> Usage:
    """What described instances have run (and cost) from their launch until `now`."""
    seconds = cost = 0.0
    for instance in instances:
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
