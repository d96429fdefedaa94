"""The merge: a mission's succeeded parts, in index order, into one result object and its receipt
(`chalicelib.receipt`), at any size a mission may have (100,000 parts), within result_processor's
limits (60 s, 256 MB), over as many invocations as it takes, each continuing where the last one
stopped.

- **Reads in parallel, in order, bounded.** The parts are fetched on a pool of `READERS`
  threads, at most `READ_AHEAD` transactions ahead of the one being merged, and merged strictly
  in index order. A fetched body is held only if it is small (`INLINE_MAX`); a larger one stays
  an open stream until its turn. At S3's 20-50 ms per small object a serial loop ends after
  2,000-4,000 parts in 60 s; 16 in flight make that 16 times as many.
- **A multipart upload of the result.** Merged bytes collect in a buffer that goes up as a part
  whenever it holds `part_size(n)` (8 MiB for the first 2,500 parts, growing so that 10,000
  parts hold 195 GiB); only the last may be smaller, as S3 requires.
- **No bytes through Lambda for large parts.** A part of at least `MIN_PART` (5 MiB) is copied by
  S3 itself (UploadPartCopy, pinned to the ETag that was checked). Its sha256 is checked without
  reading it where S3 holds a full-object SHA-256 (a single-PUT part: S3's checksum is then the
  sha256 of its bytes, and must equal the worker's stamp); a part uploaded in several pieces
  has only a checksum of checksums, so its bytes are read and hashed (not uploaded) first. The
  bytes the buffer held before it are topped up to `MIN_PART` from the part's head (a ranged
  read) and go up as a part of their own.
- **Checkpoints.** Every `CHECKPOINT_SECONDS`, and before its invocation's time runs out (it
  stops `margin` seconds before, 10 s of a 60 s invocation), the merge saves where it stands
  (`Checkpoint`, JSON on the mission item): the upload id, the parts uploaded, the next
  transaction index, the byte offset, the bytes not yet in a part (a scratch object, the *tail*)
  and the manifest lines written so far (scratch objects, *chunks*; each also lists the parts
  uploaded meanwhile and their sha256s). Scratch objects are under `merging/<mission>/`, named
  by the invocation that wrote them, and deleted when the merge ends. Having saved, a merge that
  ran out of time asks for its own continuation on result_processor's queue (`MergeRequest`)
  and raises `MergeSuspended`. A merge that crashed before saving continues from the last
  checkpoint, redone by the next event (a redelivery, the sweeper, a continuation): work since
  the last checkpoint is lost, nothing before it.
- **One holder.** Working on a merge takes its lease (`MissionStore.claim_merge`), held no
  longer than the holder's invocation can run; every checkpoint is a write conditional on
  holding it (and on the mission still RUNNING), so two invocations never interleave, and one
  that lost it stops. The layout of the upload's parts is a function of the parts' sizes alone,
  never of where a checkpoint fell, so a holder that lost its lease and still uploads a part
  writes the very bytes its successor writes under that number.
- **The end.** Once every transaction is in, the last part goes up, a checkpoint says so, the
  upload is completed (parts and their checksums from the chunks), the manifest is put together
  from its chunks (one PUT, If-None-Match: the first receipt stays), scratch objects are deleted,
  stray uploads of the result aborted, and the checkpoint says done. The whole result's sha256
  cannot be carried across invocations (a hashlib object does not pickle), so the receipt pins
  it by its parts (`receipt.parts_digest`).
- A part that is not what its worker uploaded is never merged: the mission fails naming it, and
  the upload and scratch objects are removed (`_refuse`). A merge whose mission ended meanwhile
  (cancelled, timed out) is cleaned up the same way (`abandon`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from botocore.exceptions import ClientError, FlexibleChecksumError

from chalicelib.context import Context
from chalicelib.domain import Mission, Transaction, Usage, utc
from chalicelib.events import send_merge_request
from chalicelib.layout import (
    SHA256_METADATA,
    PartStamp,
    manifest_key,
    merge_scratch_key,
    result_key,
)
from chalicelib.observability import MetricUnit, count, logger, metrics
from chalicelib.receipt import (
    CONTENT_TYPE,
    Chunk,
    ManifestWriter,
    MergedPart,
    b64_sha256,
    full_object_checksum,
    part_problem,
)
from chalicelib.states import MissionStatus, TransactionStatus

MIB = 1024**2
MIN_PART = 5 * MIB  # S3's smallest part, but for the last
MAX_PARTS = 10_000  # S3's most parts in one upload
MAX_COPY = 5 * 1024**3  # S3's largest part (and UploadPartCopy range)
INLINE_MAX = 1 * MIB  # a fetched body up to this size is read by the reader thread
READERS = 16  # GetObjects in flight
READ_AHEAD = 32  # transactions fetched ahead of the one being merged
INDEX_WINDOW = 500  # transaction indexes per Query (a page of ~200 KB)
MAX_MARGIN_SECONDS = 10.0  # stop this long before the invocation's end (a sixth, if shorter)
MIN_SLICE_SECONDS = 0.5  # less than this left after the margin: leave it to a new invocation
CHECKPOINT_SECONDS = 15.0  # the most work a crash may cost
LEASE_SLACK_SECONDS = 5.0
DEFAULT_BUDGET_SECONDS = 50.0  # outside Lambda (tools, tests): as in a 60 s invocation
_MANIFEST_IN_MEMORY_BYTES = 4 * MIB  # a larger receipt is spooled to /tmp
_READ_CHUNK = 1 * MIB

MERGING, COMPLETE, DONE = "merging", "complete", "done"


def part_size(number: int) -> int:
    """The size of buffered part `number` (from 1): 8 MiB for parts 1-2,500, then 16, 24 and
    32 MiB per 2,500, so that a result of 10,000 parts may hold 195 GiB."""
    return 8 * MIB * (1 + (number - 1) // 2500)


class MergeSuspended(Exception):
    """The merge stopped before its end and continues later: its checkpoint is saved and its
    continuation asked for, or another invocation holds it."""


class _Unmergeable(Exception):
    """The merge cannot be done: the mission fails, saying why (`_refuse`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def explained(self) -> str:
        return f"the parts cannot be merged ({self.reason}); nothing was merged"


class _PartMismatch(_Unmergeable):
    def __init__(self, txn: Transaction, reason: str) -> None:
        super().__init__(reason)
        self.txn = txn

    def explained(self) -> str:
        return (
            f"transaction {self.txn.index}: its part {self.txn.part_key} is not what its worker"
            f" uploaded ({self.reason}); nothing was merged"
        )


class _LeaseLost(Exception):
    pass


@dataclass(frozen=True)
class Checkpoint:
    """Where a merge stands between invocations (JSON on the mission item, a few KB).

    Every transaction before `next_index` is in: its line in a chunk, its bytes in the upload's
    parts 1..`part_number` (`uploaded_bytes` of them) or in the tail object after them."""

    phase: str = MERGING  # merging; complete: every part is up; done: result and receipt written
    next_index: int = 0
    offset: int = 0  # result bytes merged
    upload_id: str | None = None
    part_number: int = 0
    uploaded_bytes: int = 0
    tail: str | None = None  # scratch key of the bytes after the last part
    chunks: tuple[tuple[str, int], ...] = ()  # (scratch key, bytes of manifest lines), in order
    transactions: int = 0
    parts: int = 0
    invocations: int = 0  # that saved progress
    checkpoints: int = 0
    manifest_sha256: str | None = None  # once done

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str | None) -> Checkpoint:
        if not text:
            return cls()
        data = json.loads(text)
        data["chunks"] = tuple((str(k), int(n)) for k, n in data.get("chunks", ()))
        return cls(**data)


def checkpoint_of(ctx: Context, mission_id: str) -> Checkpoint:
    """The merge's last checkpoint (an empty one if it never began)."""
    return Checkpoint.loads(ctx.store.missions.merge_checkpoint(mission_id))


# ---- the entry ---------------------------------------------------------------------------


def merge(ctx: Context, mission: Mission, usage_of: Callable[[], Usage]) -> str | None:
    """Merge `mission`'s parts (or continue merging them); the result key once merged.

    None if a part was refused (the mission failed, naming it). Raises `MergeSuspended` if the
    merge continues later. `usage_of()`: the mission's usage for the receipt's result line."""
    mission_id = mission.mission_id
    if mission.status is not MissionStatus.RUNNING:
        return mission.result_key  # ended: merged before, or never to be
    budget = _Budget(ctx.time_left)
    if budget.left() < MIN_SLICE_SECONDS:
        _ask_to_continue(ctx, mission_id)
        raise MergeSuspended("too little time left in this invocation")
    owner = uuid.uuid4().hex[:16]
    now = ctx.clock()
    until = now + budget.total() + LEASE_SLACK_SECONDS
    claim = ctx.store.missions.claim_merge(mission_id, owner, now, until)
    if claim is None:
        raise MergeSuspended("another invocation holds the merge, or the mission ended")
    saved = Checkpoint.loads(claim.checkpoint)
    if saved.phase == DONE:
        ctx.store.missions.end_merge(mission_id, owner, claim.checkpoint)
        return result_key(mission_id)
    run = _Run(ctx, mission, owner, saved, budget, usage_of, first=claim.claims == 1)
    began = time.monotonic()
    try:
        merged = run.run()
        if budget.left() < budget.total() / 2:
            # Merged, but what follows (finishing the mission, its email: reading every
            # transaction again) may not fit in what is left: a new invocation does it, with
            # all its time (and finds the merge done).
            _ask_to_continue(ctx, mission_id, again=True)
            raise MergeSuspended("merged; the mission is settled by a new invocation")
        return merged
    except MergeSuspended:
        raise
    except _Unmergeable as e:
        _refuse(ctx, mission, run, e)
        return None
    except _LeaseLost as e:
        raise MergeSuspended(str(e)) from e
    except BaseException:
        # A crash: free the lease now (not at its expiry), with the checkpoint as saved.
        ctx.store.missions.end_merge(mission_id, owner, run.saved.dumps())
        raise
    finally:
        metrics.add_metric(
            name="MergeSeconds", unit=MetricUnit.Seconds, value=time.monotonic() - began
        )


# When this process last asked for a mission's continuation: the records after a suspended
# merge's in the same batch (its outcome events, a duplicate request) need not ask again.
_ASKED: dict[str, float] = {}
_ASK_AGAIN_SECONDS = 30.0


def _ask_to_continue(ctx: Context, mission_id: str, again: bool = False) -> None:
    """Send a merge request for the mission, unless this process just did (`again`: even so,
    the request it sent has been taken: this is the invocation it started)."""
    now = time.monotonic()
    asked = _ASKED.get(mission_id)
    if not again and asked is not None and now - asked < _ASK_AGAIN_SECONDS:
        return
    send_merge_request(ctx, mission_id)
    _ASKED[mission_id] = now
    for stale in [m for m, at in _ASKED.items() if now - at >= _ASK_AGAIN_SECONDS]:
        del _ASKED[stale]


def abandon(ctx: Context, mission: Mission) -> bool:
    """Clean up the merge of a mission that ended while it was under way (a cancel, a deadline):
    its upload aborted, its scratch objects deleted. True if there was one to clean up."""
    saved = checkpoint_of(ctx, mission.mission_id)
    if saved == Checkpoint() or saved.phase == DONE:
        return False  # never began (an upload begun by one that died: the lifecycle rule's)
    owner, now = uuid.uuid4().hex[:16], ctx.clock()
    claim = ctx.store.missions.claim_merge(
        mission.mission_id, owner, now, now + DEFAULT_BUDGET_SECONDS, running=False
    )
    if claim is None:
        return False
    saved = Checkpoint.loads(claim.checkpoint)
    _discard(ctx, mission.mission_id, saved.upload_id, _scratch_of(saved))
    _abort_strays(ctx, result_key(mission.mission_id), keep=None)
    ctx.store.missions.end_merge(mission.mission_id, owner, None)
    count("MergesAbandoned")
    logger.info("merge of an ended mission cleaned up", extra={"status": mission.status.value})
    return True


# ---- time ----------------------------------------------------------------------------------


class _Budget:
    """The invocation's time: what is left after the margin, and when a checkpoint is due."""

    def __init__(self, time_left: Callable[[], float] | None) -> None:
        if time_left is None:
            started = time.monotonic()
            time_left = lambda: DEFAULT_BUDGET_SECONDS - (time.monotonic() - started)  # noqa: E731
        self._time_left = time_left
        first = time_left()
        self._total = first
        self.margin = min(MAX_MARGIN_SECONDS, max(0.0, first) / 6)
        self._checkpointed = first

    def total(self) -> float:
        return max(0.0, self._total)

    def left(self) -> float:
        """Seconds of work left before the margin."""
        return self._time_left() - self.margin

    def checkpoint_due(self) -> bool:
        return self._checkpointed - self._time_left() >= CHECKPOINT_SECONDS

    def checkpointed(self) -> None:
        self._checkpointed = self._time_left()


# ---- reading ahead -------------------------------------------------------------------------


@dataclass
class _Fetched:
    """A part's GetObject: its metadata, and its bytes (small) or its open body (larger)."""

    txn: Transaction
    size: int
    etag: str
    stamp: PartStamp | None
    checksum: str | None  # S3's full-object ChecksumSHA256 (base64), if it has one
    data: bytes | None = None
    body: Any = None
    error: str | None = None  # S3's checksum refused the bytes

    def close(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None


def _transactions(
    ctx: Context, mission_id: str, first: int, mission: Mission
) -> Iterator[Transaction]:
    """The claimed transactions from index `first` on, in index order, read `INDEX_WINDOW`
    indexes at a time: an invocation that stops early has read little it did not merge."""
    end = max(mission.total, mission.handed_out)
    for start in range(first, end, INDEX_WINDOW):
        yield from ctx.store.transactions.of(mission_id, start, start + INDEX_WINDOW - 1)


def _mergeable(txn: Transaction) -> bool:
    return txn.status is TransactionStatus.SUCCEEDED and bool(txn.part_key)


def _fetch(s3: Any, bucket: str, txn: Transaction) -> _Fetched:
    # ChecksumMode: botocore checks the bytes against S3's full-object checksum as they are read.
    response = s3.get_object(Bucket=bucket, Key=txn.part_key, ChecksumMode="ENABLED")
    fetched = _Fetched(
        txn,
        int(response["ContentLength"]),
        str(response.get("ETag", "")),
        PartStamp.from_metadata(response.get("Metadata") or {}),
        full_object_checksum(response),
        body=response["Body"],
    )
    if fetched.size <= INLINE_MAX:
        try:
            fetched.data = bytes(fetched.body.read())
        except FlexibleChecksumError as e:
            fetched.error = f"S3's checksum refused its bytes ({e})"
        finally:
            fetched.close()
    return fetched


def _read_ahead(
    fetch: Callable[[Transaction], _Fetched], transactions: Iterator[Transaction]
) -> Generator[tuple[Transaction, _Fetched | None]]:
    """Each transaction with its part fetched (None: it has none to merge), in their order,
    fetching at most READ_AHEAD ahead on READERS threads. Closing it early cancels the rest."""
    pool = ThreadPoolExecutor(READERS, thread_name_prefix="merge-read")
    window: deque[tuple[Transaction, Future[_Fetched] | None]] = deque()
    try:
        for txn in transactions:
            window.append((txn, pool.submit(fetch, txn) if _mergeable(txn) else None))
            if len(window) > READ_AHEAD:
                first, future = window.popleft()
                yield first, None if future is None else future.result()
        while window:
            first, future = window.popleft()
            yield first, None if future is None else future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for _, future in window:
            done = future is not None and future.done() and not future.cancelled()
            if done and future.exception() is None:  # type: ignore[union-attr]
                future.result().close()  # type: ignore[union-attr]


# ---- one invocation's work ---------------------------------------------------------------


@dataclass
class _Span:
    """What this invocation merged since its last checkpoint: manifest lines, parts uploaded."""

    writer: ManifestWriter
    lines: io.BytesIO
    uploaded: list[tuple[int, str, str | None, int]] = field(default_factory=list)

    @classmethod
    def at(cls, offset: int, last_index: int) -> _Span:
        lines = io.BytesIO()
        return cls(ManifestWriter(lines.write, offset=offset, last_index=last_index), lines)

    @property
    def empty(self) -> bool:
        return not self.writer.transactions and not self.uploaded


class _Run:
    """One invocation's turn at a merge, from its checkpoint `saved` on."""

    def __init__(
        self,
        ctx: Context,
        mission: Mission,
        owner: str,
        saved: Checkpoint,
        budget: _Budget,
        usage_of: Callable[[], Usage],
        first: bool = False,
    ) -> None:
        self.ctx, self.mission, self.owner, self.budget = ctx, mission, owner, budget
        self.first = first  # no invocation before this one took the merge's lease
        self.usage_of = usage_of
        self.s3 = ctx.aws.s3
        self.bucket = ctx.settings.result_bucket
        self.key = result_key(mission.mission_id)
        self.saved = saved  # the last checkpoint written (what a crash goes back to)
        self.invocations = saved.invocations + 1
        self.buffer = bytearray()  # result bytes after part `part_number`
        self.part_number = saved.part_number
        self.uploaded_bytes = saved.uploaded_bytes
        self.upload_id = saved.upload_id
        self.span = _Span.at(saved.offset, saved.next_index - 1)
        self.written: dict[str, bytes] = {}  # chunks this invocation wrote: no need to read back
        self.unsaved: list[str] = []  # scratch keys written that no checkpoint names yet
        self.sequence = 0
        self.put_checksum: str | None = None  # of a result small enough for one PUT

    # ---- the steps

    def run(self) -> str:
        if self.saved.phase == MERGING:
            self._merge_transactions()
            if self.budget.left() < self._finish_seconds():
                self._suspend("too little time left to complete the result", COMPLETE)
            if self.upload_id is not None and self.saved.checkpoints:
                # Completing the upload cannot be undone: save first what a crash would lose.
                # (A merge that never saved anything simply begins again: no upload to reuse.)
                self._checkpoint(COMPLETE)
        # (An invocation that begins here completes whatever its time: it has all there is.)
        return self._finish()

    def _merge_transactions(self) -> None:
        self._load_tail()
        mission_id = self.mission.mission_id
        transactions = _transactions(self.ctx, mission_id, self.saved.next_index, self.mission)
        fetched = _read_ahead(lambda t: _fetch(self.s3, self.bucket, t), transactions)
        try:
            for merged, (txn, part) in enumerate(fetched):
                # Out of time, having merged something (so each invocation makes progress,
                # however slow its first read was).
                if merged and self.budget.left() <= 0:
                    if part is not None:
                        part.close()
                    self._suspend("the invocation's time is running out")
                if self.budget.checkpoint_due():
                    self._checkpoint(MERGING)
                self._merge_one(txn, part)
        finally:
            fetched.close()
        if self.upload_id is None:
            self._put_whole(bytes(self.buffer))  # no part went up: the result is one PUT
        elif self.buffer:
            self._upload(bytes(self.buffer))  # the last part: it may be small
        self.buffer.clear()

    def _merge_one(self, txn: Transaction, fetched: _Fetched | None) -> None:
        if fetched is None:
            self.span.writer.transaction(txn, None)
            return
        try:
            if fetched.error is not None:
                raise _PartMismatch(txn, fetched.error)
            if fetched.stamp is None:
                raise _PartMismatch(txn, part_problem(None, "", None) or "no stamp")
            large = fetched.size >= MIN_PART
            sha256 = self._copy(fetched) if large else self._inline(fetched)
        finally:
            fetched.close()
        self.span.writer.transaction(
            txn, MergedPart(txn.part_key or "", fetched.size, sha256, fetched.stamp)
        )

    def _inline(self, fetched: _Fetched) -> str:
        """The part's bytes into the buffer, hashed and checked on the way."""
        digest = hashlib.sha256()
        if fetched.data is not None:
            digest.update(fetched.data)
            self.buffer += fetched.data
        else:
            try:
                while chunk := fetched.body.read(_READ_CHUNK):
                    digest.update(chunk)
                    self.buffer += chunk
                    self._flush_full()
            except FlexibleChecksumError as e:
                raise _PartMismatch(fetched.txn, f"S3's checksum refused its bytes ({e})") from e
        problem = part_problem(fetched.stamp, digest.hexdigest(), fetched.checksum)
        if problem is not None:
            raise _PartMismatch(fetched.txn, problem)
        self._flush_full()
        return digest.hexdigest()

    def _copy(self, fetched: _Fetched) -> str:
        """A large part: checked (by S3's checksum, or by reading it), then copied by S3; only
        what tops the buffer up to a part, or a remainder too small to be one, is read."""
        size = fetched.size
        head = MIN_PART - len(self.buffer) if 0 < len(self.buffer) < MIN_PART else 0
        rest = size - head
        keep_to = size if rest < MIN_PART else head  # the bytes [0, keep_to) go through here
        if self.part_number + 1 + -(-rest // MAX_COPY) >= MAX_PARTS:
            raise _Unmergeable(f"the result needs more than {MAX_PARTS} S3 parts")
        if fetched.checksum is not None:
            sha256 = _hex(fetched.checksum)
            problem = part_problem(fetched.stamp, sha256, fetched.checksum)
            fetched.close()
            if problem is not None:
                raise _PartMismatch(fetched.txn, problem)
            kept = self._range(fetched, 0, keep_to) if keep_to else b""
        else:
            sha256, kept = self._hash_reading(fetched, keep_to)
            problem = part_problem(fetched.stamp, sha256, None)
            if problem is not None:
                raise _PartMismatch(fetched.txn, problem)
        self.buffer += kept[:head]
        if self.buffer:
            self._upload(bytes(self.buffer))  # at least MIN_PART now
            self.buffer.clear()
        if rest < MIN_PART:
            self.buffer += kept[head:]
            self._flush_full()
            return sha256
        pieces = -(-rest // MAX_COPY)
        start = head
        for n in range(pieces):
            end = head + rest * (n + 1) // pieces
            self._upload_copy(fetched, start, end)
            start = end
        return sha256

    def _hash_reading(self, fetched: _Fetched, keep_to: int) -> tuple[str, bytes]:
        digest, kept, seen = hashlib.sha256(), bytearray(), 0
        try:
            while chunk := fetched.body.read(_READ_CHUNK):
                digest.update(chunk)
                if seen < keep_to:
                    kept += chunk[: keep_to - seen]
                seen += len(chunk)
        except FlexibleChecksumError as e:
            raise _PartMismatch(fetched.txn, f"S3's checksum refused its bytes ({e})") from e
        finally:
            fetched.close()
        return digest.hexdigest(), bytes(kept)

    def _range(self, fetched: _Fetched, start: int, end: int) -> bytes:
        response = self.s3.get_object(
            Bucket=self.bucket,
            Key=fetched.txn.part_key,
            Range=f"bytes={start}-{end - 1}",
            IfMatch=fetched.etag,
        )
        return bytes(response["Body"].read())

    # ---- the upload

    def _flush_full(self) -> None:
        while len(self.buffer) >= (size := part_size(self.part_number + 1)):
            self._upload(bytes(self.buffer[:size]))
            del self.buffer[:size]

    def _ensure_upload(self) -> str:
        """The result's multipart upload, begun on its first part. Named by the next
        checkpoint; one begun by an invocation that died first is aborted at the end
        (`_abort_strays`), or by the bucket's lifecycle rule."""
        if self.upload_id is None:
            created = self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ChecksumAlgorithm="SHA256"
            )
            self.upload_id = str(created["UploadId"])
        return self.upload_id

    def _put_whole(self, data: bytes) -> None:
        answer = self.s3.put_object(
            Bucket=self.bucket, Key=self.key, Body=data, ChecksumAlgorithm="SHA256"
        )
        self.put_checksum = answer.get("ChecksumSHA256")

    def _upload(self, data: bytes) -> None:
        upload_id = self._ensure_upload()
        if self.part_number + 1 > MAX_PARTS:
            raise _Unmergeable(f"the result needs more than {MAX_PARTS} S3 parts")
        self.part_number += 1
        answer = self.s3.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=upload_id,
            PartNumber=self.part_number,
            Body=data,
            ChecksumAlgorithm="SHA256",
        )
        self._uploaded(answer, len(data))

    def _upload_copy(self, fetched: _Fetched, start: int, end: int) -> None:
        upload_id = self._ensure_upload()
        self.part_number += 1
        answer = self.s3.upload_part_copy(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=upload_id,
            PartNumber=self.part_number,
            CopySource={"Bucket": self.bucket, "Key": fetched.txn.part_key},
            CopySourceIfMatch=fetched.etag,  # the object whose checksum was checked
            CopySourceRange=f"bytes={start}-{end - 1}",
        )
        self._uploaded(answer.get("CopyPartResult") or {}, end - start)
        count("PartsCopied")

    def _uploaded(self, answer: dict[str, Any], size: int) -> None:
        self.uploaded_bytes += size
        checksum = answer.get("ChecksumSHA256")
        self.span.uploaded.append((self.part_number, str(answer["ETag"]), checksum, size))

    # ---- checkpoints

    def _load_tail(self) -> None:
        if self.saved.tail is None:
            return
        tail = self.s3.get_object(Bucket=self.bucket, Key=self.saved.tail)["Body"].read()
        expected = self.saved.offset - self.saved.uploaded_bytes
        if len(tail) != expected:
            raise RuntimeError(f"merge tail {self.saved.tail}: {len(tail)} bytes, not {expected}")
        self.buffer += tail

    def _scratch(self, suffix: str) -> str:
        return merge_scratch_key(self.mission.mission_id, f"{self.owner}.{self.sequence}{suffix}")

    def _checkpoint(self, phase: str, release: bool = False) -> None:
        """Save where the merge stands (its tail and a chunk first, then the checkpoint)."""
        self.sequence += 1
        tail = None
        if self.buffer:
            tail = self._scratch(".tail")
            self._put_scratch(tail, bytes(self.buffer))
        chunks = self.saved.chunks
        if not self.span.empty:
            key = self._scratch(".chunk")
            lines = self.span.lines.getvalue()
            body = lines + _trailer(self.span)
            self._put_scratch(key, body)
            self.written = {key: body}  # the last one: the end needs not read it back
            chunks = (*chunks, (key, len(lines)))
        superseded = self.saved.tail
        self._save(self._state(phase, tail, chunks), keep=not release)
        if superseded:
            _delete_keys(self.ctx, [superseded])
        writer = self.span.writer
        self.span = _Span.at(writer.offset, writer.last_index)
        self.budget.checkpointed()

    def _state(
        self, phase: str, tail: str | None, chunks: tuple[tuple[str, int], ...]
    ) -> Checkpoint:
        """Where the merge stands now, its current span (written as `chunks`' last) included."""
        writer = self.span.writer
        return replace(
            self.saved,
            phase=phase,
            next_index=writer.last_index + 1,
            offset=writer.offset,
            upload_id=self.upload_id,
            part_number=self.part_number,
            uploaded_bytes=self.uploaded_bytes,
            tail=tail,
            chunks=chunks,
            transactions=self.saved.transactions + writer.transactions,
            parts=self.saved.parts + writer.parts,
            invocations=self.invocations,
            checkpoints=self.saved.checkpoints + 1,
        )

    def _put_scratch(self, key: str, body: bytes) -> None:
        self.unsaved.append(key)
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ChecksumAlgorithm="SHA256")

    def _save(self, checkpoint: Checkpoint, keep: bool) -> None:
        """The conditional write; a refusal means this invocation stops (`_LeaseLost`)."""
        until = self.ctx.clock() + max(0.0, self.budget.left()) + self.budget.margin
        mission_id = self.mission.mission_id
        applied = self.ctx.store.missions.save_merge(
            mission_id,
            self.owner,
            checkpoint.dumps(),
            until + LEASE_SLACK_SECONDS if keep else None,
        )
        if not applied:
            self._lost()
        self.saved = checkpoint
        self.unsaved.clear()

    def _lost(self) -> None:
        """The checkpoint was refused: another holder took over, or the mission ended."""
        mission_id = self.mission.mission_id
        mission = self.ctx.store.missions.get(mission_id)
        if mission.status is not MissionStatus.RUNNING and self.ctx.store.missions.end_merge(
            mission_id, self.owner, None
        ):
            # Still the holder, of a mission that ended: nobody else will clean up.
            _discard(self.ctx, mission_id, self.upload_id, [*_scratch_of(self.saved)])
            count("MergesAbandoned")
        _delete_keys(self.ctx, self.unsaved)
        raise _LeaseLost(f"the merge's checkpoint was refused (mission {mission.status.value})")

    def _suspend(self, why: str, phase: str = MERGING) -> None:
        self._checkpoint(phase, release=True)  # the continuation may start at once
        saved = self.saved
        _ask_to_continue(self.ctx, self.mission.mission_id, again=True)
        count("MergesSuspended")
        logger.info(
            "merge suspended; continued by a new invocation",
            extra={
                "why": why,
                "next_index": saved.next_index,
                "offset": saved.offset,
                "parts_uploaded": saved.part_number,
                "invocations": saved.invocations,
            },
        )
        raise MergeSuspended(why)

    # ---- the end

    def _finish_seconds(self) -> float:
        """A generous estimate of `_finish`: reading the chunks back and writing the manifest."""
        manifest_bytes = sum(n for _, n in self.saved.chunks) + self.span.lines.tell()
        return 3.0 + manifest_bytes / 5e6 + self.part_number / 1000

    def _finish(self) -> str:
        """Complete the result, write its receipt from the chunks (and the span not saved
        as one), say so in the checkpoint, then clean up."""
        mission_id, writer = self.mission.mission_id, self.span.writer
        chunks = [self._chunk(key, n) for key, n in self.saved.chunks]
        if not self.span.empty:
            chunks.append((_index(self.span), self.span.lines.getvalue()))
        size = writer.offset
        if self.upload_id is not None:
            parts = [p for index, _ in chunks for p in index["uploaded"]]
            if [p[0] for p in parts] != list(range(1, self.part_number + 1)):
                raise RuntimeError(f"the chunks name parts {[p[0] for p in parts][:20]}...")
            if sum(p[3] for p in parts) != size:
                raise RuntimeError("the chunks' parts do not add up to the merged bytes")
            checksum = self._complete(self.upload_id, parts)
        elif self.put_checksum is not None:  # put whole, by this invocation
            checksum = self.put_checksum
        else:  # ... or by the one that saved the checkpoint
            head = self.s3.head_object(Bucket=self.bucket, Key=self.key, ChecksumMode="ENABLED")
            checksum = full_object_checksum(head)
        with tempfile.SpooledTemporaryFile(max_size=_MANIFEST_IN_MEMORY_BYTES) as manifest:
            receipt = ManifestWriter(manifest.write)
            receipt.mission(
                self.mission,
                source_bucket=self.mission.bucket_of_input(self.ctx.settings.source_bucket),
                result_bucket=self.bucket,
                result_key=self.key,
            )
            for index, lines in chunks:
                receipt.append(
                    Chunk(
                        lines,
                        index["transactions"],
                        tuple(index["digests"]),
                        index["size"],
                        index["last_index"],
                    )
                )
            receipt.result(
                key=self.key,
                size=size,
                usage=self.usage_of(),
                merged_at=utc(self.ctx.clock()),
                s3_checksum=checksum,
            )
            _put_manifest(self.ctx, mission_id, manifest, receipt.sha256)
        done = replace(self._state(DONE, None, ()), manifest_sha256=receipt.sha256)
        scratch = [*_scratch_of(self.saved), *self.unsaved]
        self._save(done, keep=False)
        # Only now: until the checkpoint says done, a crash redoes the end from the chunks.
        _delete_keys(self.ctx, scratch)
        if not self.first:  # an invocation before this one may have begun an upload and died
            _abort_strays(self.ctx, self.key, keep=self.upload_id)
        count("MergesCompleted")
        logger.info(
            "merged",
            extra={
                "bytes": size,
                "parts_uploaded": self.part_number,
                "transactions": done.transactions,
                "invocations": done.invocations,
            },
        )
        return self.key

    def _chunk(self, key: str, lines_bytes: int) -> tuple[dict[str, Any], bytes]:
        body = self.written.get(key)
        if body is None:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return json.loads(body[lines_bytes:]), bytes(body[:lines_bytes])

    def _complete(self, upload_id: str, parts: list[list[Any]]) -> str | None:
        """Complete the upload; S3's checksum of the result (None if it gives none)."""
        listed = [
            {"PartNumber": n, "ETag": etag, **({"ChecksumSHA256": c} if c else {})}
            for n, etag, c, _ in parts
        ]
        try:
            answer = self.s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": listed},
            )
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise
            # Completed by an invocation that died before its checkpoint said so.
            answer = self.s3.head_object(Bucket=self.bucket, Key=self.key, ChecksumMode="ENABLED")
            if int(answer["ContentLength"]) != self.saved.offset:
                raise
        return answer.get("ChecksumSHA256")


def _index(span: _Span) -> dict[str, Any]:
    """What a chunk carries after its lines: its parts' sha256s, the upload's parts."""
    writer = span.writer
    return {
        "transactions": writer.transactions,
        "digests": writer.digests,
        "size": writer.offset - writer.start,
        "last_index": writer.last_index,
        "uploaded": [list(p) for p in span.uploaded],
    }


def _trailer(span: _Span) -> bytes:
    return json.dumps(_index(span), separators=(",", ":")).encode()


def _hex(b64: str) -> str:
    try:
        return base64.b64decode(b64, validate=True).hex()
    except (binascii.Error, ValueError):
        return ""


# ---- cleaning up ---------------------------------------------------------------------------


def _scratch_of(checkpoint: Checkpoint) -> list[str]:
    return [key for key, _ in checkpoint.chunks] + ([checkpoint.tail] if checkpoint.tail else [])


def _discard(ctx: Context, mission_id: str, upload_id: str | None, keys: list[str]) -> None:
    """Abort the upload (if any) and delete the scratch objects."""
    s3, bucket = ctx.aws.s3, ctx.settings.result_bucket
    if upload_id is not None:
        try:
            s3.abort_multipart_upload(Bucket=bucket, Key=result_key(mission_id), UploadId=upload_id)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise
    _delete_keys(ctx, keys)


def _delete_keys(ctx: Context, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        ctx.aws.s3.delete_objects(
            Bucket=ctx.settings.result_bucket,
            Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]], "Quiet": True},
        )


def _abort_strays(ctx: Context, key: str, keep: str | None) -> None:
    """Abort every other upload of the result: one begun by an invocation that died before
    naming it in a checkpoint (the bucket's lifecycle rule is the backstop)."""
    s3, bucket = ctx.aws.s3, ctx.settings.result_bucket
    listed = s3.list_multipart_uploads(Bucket=bucket, Prefix=key)
    for upload in listed.get("Uploads", []):
        if upload["Key"] == key and upload["UploadId"] != keep:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
            count("MergeUploadsAborted")


def _refuse(ctx: Context, mission: Mission, run: _Run, e: _Unmergeable) -> None:
    """A part that is not what its worker uploaded is never merged, nor silently dropped: the
    mission fails, naming it (RUNNING -> FAILED as a whole, the transition a deadline uses);
    what the merge wrote so far is removed. So for a result S3 cannot hold in one object."""
    index = e.txn.index if isinstance(e, _PartMismatch) else None
    logger.error("the merge refused", extra={"index": index, "reason": e.reason})
    count("PartsRefused" if isinstance(e, _PartMismatch) else "MergesRefused")
    ctx.store.missions.time_out(mission, e.explained(), ctx.clock())
    _discard(ctx, mission.mission_id, run.upload_id, [*_scratch_of(run.saved), *run.unsaved])
    _abort_strays(ctx, run.key, keep=None)
    ctx.store.missions.end_merge(mission.mission_id, run.owner, None)


def _put_manifest(ctx: Context, mission_id: str, manifest: Any, sha256: str) -> None:
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
