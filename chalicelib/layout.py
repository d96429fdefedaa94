"""The protocol between the control side and the workers, written once.

- object keys in the result bucket (parts sort by index; each names the claim that made it);
- the failure marker: what a transaction out of attempts reports, through the same event path
  as a part (written by the worker and the sweeper, read by result_processor);
- the part stamp: what a worker vouches for about a part it uploads (its sha256, exit code and
  run seconds), carried as the part's S3 metadata and checked by the merge;
- the tags that tie an EC2 instance to its stage and mission.

Pure: no AWS here, so the worker imports it without the control side's launch code.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

PARTS_PREFIX = "parts/"
INDEX_DIGITS = 8  # zero-padded, so keys sort in index order
MAX_TRANSACTIONS_EVER = 10**INDEX_DIGITS
_OUTCOME = re.compile(
    rf"^parts/(?P<mission>[^/]+)/(?P<index>\d{{{INDEX_DIGITS}}})(?:-(?P<last>\d{{{INDEX_DIGITS}}}))?"
    r"\.(?P<claim>[1-9]\d*)\.(?P<kind>out|failed)$"
)
RESULTS_PREFIX = "results/"

MISSION_TAG = "lighthpc:mission"
STAGE_TAG = "lighthpc:stage"


# Outcome keys carry the claim that produced them (a transaction's claims only ever count up,
# even when a hand-back gives its attempt back), so a part from a claim that no longer holds the
# transaction is never mistaken for the holder's: it is not counted, and never merged.
# A block's part (a claim of several consecutive transactions: their outputs concatenated in
# index order) names its last index too, so that counting it needs no read: `first-last`.
def _outcome_stem(mission_id: str, index: int, claim: int, span: int) -> str:
    stem = f"{PARTS_PREFIX}{mission_id}/{index:0{INDEX_DIGITS}d}"
    if span > 1:
        stem += f"-{index + span - 1:0{INDEX_DIGITS}d}"
    return f"{stem}.{claim}"


def part_key(mission_id: str, index: int, claim: int, span: int = 1) -> str:
    return f"{_outcome_stem(mission_id, index, claim, span)}.out"


def failure_key(mission_id: str, index: int, claim: int, span: int = 1) -> str:
    return f"{_outcome_stem(mission_id, index, claim, span)}.failed"


def result_key(mission_id: str) -> str:
    return f"{RESULTS_PREFIX}{mission_id}/result.out"


def manifest_key(mission_id: str) -> str:
    """The receipt of the merged result, next to it (`chalicelib.receipt`)."""
    return f"{RESULTS_PREFIX}{mission_id}/manifest.json"


PLANS_PREFIX = "plans/"


def line_index_key(mission_id: str) -> str:
    """Lines mode: where each slice's first byte lies in the input, one little-endian uint64 per
    slice (`chalicelib.splitting`), in the result bucket: written by the scheduler as it counts
    the lines, read by each worker for its own slice (a 16-byte range)."""
    return f"{PLANS_PREFIX}{mission_id}/line-offsets.u64"


# A merge that spans several invocations keeps what it carries between them here (the bytes not
# yet in a multipart part, the manifest lines written so far): `chalicelib.merge`. Not under
# results/, so a mission's folder there only ever holds its result and its receipt; the merge
# deletes them when it ends, and a lifecycle rule expires what a merge that died left.
MERGING_PREFIX = "merging/"


def merge_scratch_key(mission_id: str, name: str) -> str:
    return f"{MERGING_PREFIX}{mission_id}/{name}"


def pinned_input(version: str | None, etag: str | None) -> dict[str, str]:
    """GetObject arguments that read exactly the input a mission planned: its version (the
    source bucket is versioned), or, where there is none, its ETag (S3 answers 412 if the object
    was replaced)."""
    if version:
        return {"VersionId": version}
    return {"IfMatch": f'"{etag}"'} if etag else {}


@dataclass(frozen=True)
class Outcome:
    mission_id: str
    index: int
    succeeded: bool
    claim: int  # which claim of the transaction produced it
    span: int = 1  # the transactions it reports: index .. index + span - 1 (a block)


def parse_outcome_key(key: str) -> Outcome | None:
    """The outcome an object key reports, or None for anything else in the bucket."""
    m = _OUTCOME.match(key)
    if m is None:
        return None
    index = int(m["index"])
    span = 1 if m["last"] is None else int(m["last"]) - index + 1
    if span < 1:
        return None
    return Outcome(m["mission"], index, m["kind"] == "out", int(m["claim"]), span)


@dataclass(frozen=True)
class FailureMarker:
    """The body of a `.failed` object: why a transaction failed for good."""

    error: str | None
    exit_code: int | None = None
    attempts: int = 0
    timed_out: bool = False

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, body: bytes) -> FailureMarker:
        """Tolerant: a marker that cannot be read still fails its transaction, with a reason."""
        try:
            data = json.loads(body)
        except ValueError:
            return cls(error="failure marker was not JSON")
        if not isinstance(data, dict):
            return cls(error="failure marker was not a JSON object")
        error, exit_code, attempts = data.get("error"), data.get("exit_code"), data.get("attempts")
        return cls(
            error=error if isinstance(error, str) else None,
            exit_code=exit_code if _is_int(exit_code) else None,
            attempts=attempts if _is_int(attempts) else 0,
            timed_out=data.get("timed_out") is True,
        )


# S3 user metadata (x-amz-meta-<name>) of a part, and of a manifest (its own sha256).
SHA256_METADATA = "sha256"
EXIT_CODE_METADATA = "exit-code"
SECONDS_METADATA = "seconds"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class PartStamp:
    """What a worker vouches for about a part it uploads: the sha256 of its bytes, and the app's
    exit code and run seconds. It travels with the part as S3 metadata, so the merge reads it in
    the same GetObject as the bytes (no race with the worker's own record in the store), and a
    part whose bytes no longer match it is never merged."""

    sha256: str  # hex
    exit_code: int | None
    seconds: float

    @classmethod
    def of_file(cls, path: Path, exit_code: int | None, seconds: float) -> PartStamp:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
        return cls(digest.hexdigest(), exit_code, round(seconds, 3))

    def upload_args(self) -> dict[str, object]:
        """`ExtraArgs` of the part's upload. ChecksumAlgorithm makes botocore send a SHA-256 of
        every request body, which S3 checks (a body corrupted on the way is refused); the stamp
        covers the whole part whether it goes up in one PUT or in several parts."""
        return {
            "ChecksumAlgorithm": "SHA256",
            "Metadata": {
                SHA256_METADATA: self.sha256,
                EXIT_CODE_METADATA: "" if self.exit_code is None else str(self.exit_code),
                SECONDS_METADATA: f"{self.seconds:.3f}",
            },
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> PartStamp | None:
        """The stamp of a part's metadata; None if it carries no well-formed sha256."""
        sha256 = metadata.get(SHA256_METADATA, "")
        if not _SHA256_HEX.match(sha256):
            return None
        code, seconds = metadata.get(EXIT_CODE_METADATA, ""), metadata.get(SECONDS_METADATA, "")
        try:
            exit_code = int(code) if code else None
            run_seconds = float(seconds) if seconds else 0.0
        except ValueError:
            exit_code, run_seconds = None, 0.0
        return cls(sha256, exit_code, run_seconds if math.isfinite(run_seconds) else 0.0)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no exit code
