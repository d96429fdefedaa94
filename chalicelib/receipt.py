"""The receipt of a merged result: a manifest next to it, and the check of a result against it.

The manifest (`results/<mission>/manifest.json`, see `layout.manifest_key`) is JSON Lines: one
ASCII JSON object per line, in this order:

1. `{"kind": "mission", ...}`: the format, the mission (id, name, owner, times), its input (bucket,
   key, version id, ETag), its config, the plan, and where the result is;
2. one `{"kind": "transaction", ...}` per claimed transaction, in index order: its slice,
   status, attempts, claim, worker, run seconds, exit code, and for a merged part its key, its
   offset and length in the result and its sha256 (`part` is null for a failed transaction);
3. `{"kind": "result", ...}`: the result's length, `parts_sha256` (below) and the checksum S3
   gave the result object, the counts, the instance-seconds and estimated cost at the merge, and
   when it was merged. A manifest without it is truncated.

The result line pins the result through its parts: `parts_sha256` is the sha256 of the merged
parts' sha256s (hex, in index order, concatenated with nothing between them; what
`jq -r 'select(.part) | .part.sha256' | tr -d '\n' | sha256sum` prints). With every part's range
checked against its sha256, the ranges back to back from byte 0 and the result exactly as long as
they are, that says as much as a sha256 of the whole result would, and unlike one it can be
built by a merge that runs in several invocations (a hashlib object cannot be carried from one
to the next; a list of digests can). Format 1 manifests (before resumable merges) carry the whole
result's sha256 instead; `verify` checks either.

JSON Lines, not one object with a `transactions` array: at 100,000 transactions the manifest is
~20 MB, and line by line it is written as the merge streams (one line in memory at a time),
checked with the standard library in constant memory (a single object needs a streaming parser
or the whole document in memory), and built per byte range later (the lines of consecutive
ranges concatenate; an array would need its commas and brackets stitched). `jq -c` and `grep`
read it as well.

Everything here is plain functions over typed values (no AWS): `ManifestWriter` is fed the
mission, then each transaction in index order with the part the merge read (or `Chunk`s of lines
earlier writers wrote), then the result;
`verify` checks a result (and, if asked, the part objects) against a manifest, reading each once,
in order.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

from chalicelib.domain import Mission, Transaction, Usage
from chalicelib.layout import PartStamp

FORMAT = "lighthpc-receipt/3"
FORMAT_1 = "lighthpc-receipt/1"  # the result line has the whole result's sha256
FORMAT_2 = "lighthpc-receipt/2"  # one transaction per line (no `span`): as 3 with spans of 1
CONTENT_TYPE = "application/x-ndjson"
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class MergedPart:
    """A part as the merge read it: its bytes hashed on the way, its worker's stamp."""

    key: str
    size: int
    sha256: str  # hex, of the bytes read
    stamp: PartStamp


def part_problem(stamp: PartStamp | None, read_sha256: str, s3_checksum: str | None) -> str | None:
    """Why the bytes the merge read are not the part its worker uploaded, or None.

    `s3_checksum` is S3's own full-object ChecksumSHA256 (base64), None if it has none or only a
    composite one (a multipart upload's checksum of checksums)."""
    if stamp is None:
        return "it carries no sha256 from its worker"
    if read_sha256 != stamp.sha256:
        return f"its bytes have sha256 {read_sha256}, its worker uploaded {stamp.sha256}"
    if s3_checksum is not None and _hex_of(s3_checksum) != read_sha256:
        return f"its bytes have sha256 {read_sha256}, S3 holds checksum {s3_checksum}"
    return None


def full_object_checksum(response: dict[str, Any]) -> str | None:
    """S3's ChecksumSHA256 of a GetObject/HeadObject answer, if it is one of the whole object."""
    value = response.get("ChecksumSHA256")
    if not value or "-" in value or response.get("ChecksumType") == "COMPOSITE":
        return None
    return str(value)


def parts_digest(sha256s: Iterable[str]) -> str:
    """`parts_sha256`: the sha256 of the parts' sha256s (hex), in order, concatenated."""
    digest = hashlib.sha256()
    for sha256 in sha256s:
        digest.update(sha256.encode())
    return digest.hexdigest()


def b64_sha256(hex_digest: str) -> str:
    """A hex sha256 as S3's ChecksumSHA256 (base64 of the digest)."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _hex_of(b64: str) -> str | None:
    try:
        return base64.b64decode(b64, validate=True).hex()
    except (binascii.Error, ValueError):
        return None


# ---- building ----------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def mission_record(
    mission: Mission, *, source_bucket: str, result_bucket: str, result_key: str
) -> dict[str, Any]:
    return {
        "kind": "mission",
        "format": FORMAT,
        "mission_id": mission.mission_id,
        "name": mission.name,
        "owner": mission.submitted_by,
        "created_at": _iso(mission.created_at),
        "started_at": _iso(mission.started_at),
        "running_at": _iso(mission.running_at),
        "input": {
            "bucket": source_bucket,
            "key": mission.input_key,
            "version_id": mission.input_version,
            "etag": mission.input_etag,
            "bytes": mission.input_bytes,
            "lines": mission.input_lines,
        },
        "config": mission.config.model_dump(mode="json"),
        "plan": {
            "transactions": mission.total,
            # What a slice's start and end count: lines, input bytes, or the interval's units.
            "slices": {"lines": "lines", "bytes": "bytes"}.get(
                mission.config.split.mode, "interval"
            ),
        },
        "result": {"bucket": result_bucket, "key": result_key},
    }


def transaction_record(txn: Transaction, part: MergedPart | None, offset: int) -> dict[str, Any]:
    """A transaction's line. A merged part's exit code and seconds are its worker's stamp (read
    with the part, so they are there even if the worker's own record is not yet)."""
    record: dict[str, Any] = {
        "kind": "transaction",
        "index": txn.index,
        "span": txn.span,  # a block: transactions index .. index + span - 1, one part
        "status": txn.status.value,
        "slice": {"start": txn.start, "end": txn.end},
        "attempts": txn.attempts,
        "claim": txn.claim,
        "worker": txn.lease_owner,
        "seconds": txn.run_seconds if part is None else part.stamp.seconds,
        "exit_code": txn.exit_code if part is None else part.stamp.exit_code,
        "part": None,
    }
    if part is not None:
        record["part"] = {
            "key": part.key,
            "offset": offset,
            "bytes": part.size,
            "sha256": part.sha256,
        }
    return record


def encode(record: dict[str, Any]) -> bytes:
    """One line: compact, ASCII (so its bytes do not depend on an encoder's choices)."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


@dataclass(frozen=True)
class Chunk:
    """Transaction lines a writer wrote (a merge's work in one span of one invocation, carried
    to the next), with what the result line needs of them."""

    lines: bytes
    transactions: int
    digests: tuple[str, ...]  # the merged parts' sha256s (hex), in index order
    size: int  # the result bytes those parts take
    last_index: int  # the last transaction's index (-1: none)


class ManifestWriter:
    """Writes a manifest line by line into `write` (a file, a spooled buffer, a multipart
    upload's buffer), holding one line at a time, and hashes what it wrote.

    Fed the mission, then each transaction in index order (or chunks of them another writer
    wrote), then the result. `offset` is where the next merged part starts in the result, and
    `last_index` the index before the next transaction (a writer for a later range starts
    there)."""

    def __init__(
        self, write: Callable[[bytes], object], offset: int = 0, last_index: int = -1
    ) -> None:
        self._write = write
        self._digest = hashlib.sha256()
        self._parts = hashlib.sha256()  # over the parts' sha256s: `parts_sha256`
        self.start = offset
        self.offset = offset
        self.transactions = 0
        self.parts = 0
        self.digests: list[str] = []  # of the parts this writer's own lines name
        self.last_index = last_index

    def _line(self, record: dict[str, Any]) -> None:
        line = encode(record)
        self._digest.update(line)
        self._write(line)

    def mission(
        self, mission: Mission, *, source_bucket: str, result_bucket: str, result_key: str
    ) -> None:
        self._line(
            mission_record(
                mission,
                source_bucket=source_bucket,
                result_bucket=result_bucket,
                result_key=result_key,
            )
        )

    def transaction(self, txn: Transaction, part: MergedPart | None) -> None:
        if txn.index <= self.last_index:
            raise ValueError(f"transaction {txn.index} after {self.last_index}: not index order")
        self.last_index = txn.last
        self._line(transaction_record(txn, part, self.offset))
        self.transactions += txn.span
        if part is not None:
            self.offset += part.size
            self.parts += 1
            self.digests.append(part.sha256)
            self._parts.update(part.sha256.encode())

    def chunk(self, lines: bytes) -> Chunk:
        """What this writer wrote (`lines`: the bytes it handed to `write`), as a chunk."""
        return Chunk(
            lines, self.transactions, tuple(self.digests), self.offset - self.start, self.last_index
        )

    def append(self, chunk: Chunk) -> None:
        """Lines an earlier writer wrote, as they are: they continue this manifest."""
        if chunk.transactions and chunk.last_index <= self.last_index:
            raise ValueError(f"a chunk ending at {chunk.last_index} after {self.last_index}")
        self._digest.update(chunk.lines)
        self._write(chunk.lines)
        for sha256 in chunk.digests:
            self._parts.update(sha256.encode())
        self.transactions += chunk.transactions
        self.parts += len(chunk.digests)
        self.offset += chunk.size
        self.last_index = max(self.last_index, chunk.last_index)

    def result(
        self,
        *,
        key: str,
        size: int,
        usage: Usage,
        merged_at: datetime,
        s3_checksum: str | None = None,
    ) -> None:
        """The last line. `s3_checksum`: the ChecksumSHA256 S3 gave the result object (for a
        multipart upload, its checksum of the parts' checksums, `<base64>-<parts>`)."""
        if size != self.offset:
            raise ValueError(f"a result of {size} bytes from parts of {self.offset} bytes")
        self._line(
            {
                "kind": "result",
                "key": key,
                "bytes": size,
                "parts_sha256": self._parts.hexdigest(),
                "s3_checksum_sha256": s3_checksum,
                "transactions": self.transactions,
                "parts": self.parts,
                "instance_seconds": round(usage.instance_seconds, 3),
                "estimated_cost_usd": round(usage.estimated_cost, 6),
                "merged_at": _iso(merged_at),
            }
        )

    @property
    def sha256(self) -> str:
        """The sha256 (hex) of every line written so far: the manifest's, once it is complete."""
        return self._digest.hexdigest()


# ---- checking ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One way a result, a part or the manifest does not match the receipt."""

    what: str
    index: int | None = None  # the transaction, if the problem is one's
    key: str | None = None  # the object concerned

    def __str__(self) -> str:
        where = " ".join(
            p for p in (None if self.index is None else f"#{self.index}", self.key) if p
        )
        return f"{where}: {self.what}" if where else self.what


def lines(stream: BinaryIO, digest: Any = None) -> Iterator[bytes]:
    """The lines of a stream, read in chunks (feeding `digest`, e.g. a hashlib object, with
    every byte): a 20 MB manifest is never held whole."""
    pending = b""
    while chunk := stream.read(_CHUNK):
        if digest is not None:
            digest.update(chunk)
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from complete
    if pending:
        yield pending


def _digest_of(stream: BinaryIO, size: int | None, *digests: Any) -> int:
    """Read `size` bytes (all, if None) of `stream` into `digests`; how many were there."""
    seen = 0
    while size is None or seen < size:
        want = _CHUNK if size is None else min(_CHUNK, size - seen)
        chunk = stream.read(want)
        if not chunk:
            break
        seen += len(chunk)
        for digest in digests:
            digest.update(chunk)
    return seen


def _records(manifest: Iterable[bytes], problems: list[Problem]) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(manifest, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            problems.append(Problem(f"manifest line {number} is not JSON"))
            continue
        if not isinstance(record, dict):
            problems.append(Problem(f"manifest line {number} is not a JSON object"))
            continue
        yield record


def verify(
    manifest: Iterable[bytes],
    read_result: Callable[[], BinaryIO],
    read_part: Callable[[str], BinaryIO | None] | None = None,
    s3_checksum: Callable[[], str | None] | None = None,
) -> list[Problem]:
    """Every way the result (and, with `read_part`, each part object) differs from the manifest.

    `manifest` is its lines; `read_result()` opens the result; `read_part(key)` opens a part
    object, or answers None if there is none; `s3_checksum()`, asked once the result is read,
    the ChecksumSHA256 S3 gave for it (None: unknown). The result is read once, front to back: each
    merged part's range is checked against its sha256, the ranges must follow each other from
    byte 0 with nothing after the last, and the result line must name these parts
    (`parts_sha256`) and this many bytes. An empty list: the result is the one the manifest
    describes."""
    problems: list[Problem] = []
    records = _records(manifest, problems)
    header = next(records, None)
    if (
        header is None
        or header.get("kind") != "mission"
        or header.get("format") not in (FORMAT, FORMAT_2, FORMAT_1)
    ):
        return [*problems, Problem(f"the manifest does not begin with a {FORMAT} mission line")]
    result = read_result()
    whole, parts = hashlib.sha256(), hashlib.sha256()
    position, last_index, transactions, footer = 0, -1, 0, None
    for record in records:
        kind = record.get("kind")
        if kind == "result":
            footer = record
            continue
        if kind != "transaction" or footer is not None:
            problems.append(Problem(f"unexpected manifest line {str(record)[:200]}"))
            continue
        span = record.get("span", 1)
        if not isinstance(span, int) or span < 1:
            problems.append(Problem(f"span {span!r} is not a count", record.get("index")))
            span = 1
        transactions += span
        try:
            _check_transaction(record, last_index, position, result, whole, read_part, problems)
        except (KeyError, TypeError, ValueError) as e:
            problems.append(Problem(f"malformed transaction line ({e!r})", record.get("index")))
            continue
        last_index = record["index"] + span - 1
        if record["part"] is not None:
            position += record["part"]["bytes"]
            parts.update(str(record["part"]["sha256"]).encode())
    position += _digest_of(result, None, whole)  # anything after the last part
    checksum = None if s3_checksum is None else s3_checksum()
    found = _Found(transactions, position, whole.hexdigest(), parts.hexdigest(), checksum)
    return problems + _check_result(footer, header, found)


def _check_transaction(
    record: dict[str, Any],
    last_index: int,
    position: int,
    result: BinaryIO,
    whole: Any,
    read_part: Callable[[str], BinaryIO | None] | None,
    problems: list[Problem],
) -> None:
    index, part = record["index"], record["part"]
    if not isinstance(index, int) or index <= last_index:
        problems.append(Problem(f"out of index order (after #{last_index})", index))
    if part is None:
        return
    key, size, sha256 = part["key"], part["bytes"], part["sha256"]
    if part["offset"] != position:
        problems.append(
            Problem(f"offset {part['offset']}, but the parts before end at {position}", index, key)
        )
    digest = hashlib.sha256()
    got = _digest_of(result, size, digest, whole)
    if got < size:
        problems.append(
            Problem(f"the result ends {size - got} bytes into this part's range", index, key)
        )
    elif digest.hexdigest() != sha256:
        problems.append(
            Problem(
                f"bytes [{position}, {position + size}) of the result do not match the part's"
                f" sha256 {sha256}",
                index,
                key,
            )
        )
    if read_part is None:
        return
    stream = read_part(key)
    if stream is None:
        problems.append(Problem("the part object is gone", index, key))
        return
    digest = hashlib.sha256()
    stored = _digest_of(stream, None, digest)
    if (stored, digest.hexdigest()) != (size, sha256):
        problems.append(
            Problem(
                f"the part object ({stored} bytes, sha256 {digest.hexdigest()}) does not match"
                f" the manifest ({size} bytes, sha256 {sha256})",
                index,
                key,
            )
        )


@dataclass(frozen=True)
class _Found:
    """What `verify` found the result to be."""

    transactions: int
    size: int
    sha256: str  # of the whole result
    parts_sha256: str  # of the sha256s the transaction lines name
    s3_checksum: str | None


def _check_result(
    footer: dict[str, Any] | None, header: dict[str, Any], found: _Found
) -> list[Problem]:
    key = (header.get("result") or {}).get("key")
    if footer is None:
        return [Problem("the manifest has no result line: it is truncated", key=key)]
    problems = []
    if footer.get("transactions") != found.transactions:
        problems.append(
            Problem(
                f"the manifest lists {found.transactions} transactions, its result line says"
                f" {footer.get('transactions')}",
                key=key,
            )
        )
    if header.get("format") == FORMAT_1:
        described = (footer.get("bytes"), footer.get("sha256"))
        if (found.size, found.sha256) != described:
            problems.append(
                Problem(
                    f"the result ({found.size} bytes, sha256 {found.sha256}) is not the one the"
                    f" manifest describes ({described[0]} bytes, sha256 {described[1]})",
                    key=key,
                )
            )
        return problems
    if found.size != footer.get("bytes"):
        problems.append(
            Problem(
                f"the result ({found.size} bytes) is not the one the manifest describes"
                f" ({footer.get('bytes')} bytes)",
                key=key,
            )
        )
    if found.parts_sha256 != footer.get("parts_sha256"):
        problems.append(
            Problem(
                f"the transaction lines name parts with parts_sha256 {found.parts_sha256}, the"
                f" result line says {footer.get('parts_sha256')}",
                key=key,
            )
        )
    described_checksum = footer.get("s3_checksum_sha256")
    if described_checksum and found.s3_checksum and found.s3_checksum != described_checksum:
        problems.append(
            Problem(
                f"S3 holds checksum {found.s3_checksum} for the result, the manifest says"
                f" {described_checksum}",
                key=key,
            )
        )
    return problems
