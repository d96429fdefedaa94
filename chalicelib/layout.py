"""The protocol between the control side and the workers, written once.

- object keys in the result bucket (parts sort by index; each names the claim that made it);
- the failure marker: what a transaction out of attempts reports, through the same event path
  as a part (written by the worker and the sweeper, read by result_processor);
- the tags that tie an EC2 instance to its stage and mission.

Pure: no AWS here, so the worker imports it without the control side's launch code.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

PARTS_PREFIX = "parts/"
INDEX_DIGITS = 8  # zero-padded, so keys sort in index order
MAX_TRANSACTIONS_EVER = 10**INDEX_DIGITS
_OUTCOME = re.compile(
    rf"^parts/(?P<mission>[^/]+)/(?P<index>\d{{{INDEX_DIGITS}}})\.(?P<claim>[1-9]\d*)"
    r"\.(?P<kind>out|failed)$"
)
RESULTS_PREFIX = "results/"

MISSION_TAG = "lighthpc:mission"
STAGE_TAG = "lighthpc:stage"


# Outcome keys carry the claim that produced them (a transaction's claims only ever count up,
# even when a hand-back gives its attempt back), so a part from a claim that no longer holds the
# transaction is never mistaken for the holder's: it is not counted, and never merged.
def part_key(mission_id: str, index: int, claim: int) -> str:
    return f"{PARTS_PREFIX}{mission_id}/{index:0{INDEX_DIGITS}d}.{claim}.out"


def failure_key(mission_id: str, index: int, claim: int) -> str:
    return f"{PARTS_PREFIX}{mission_id}/{index:0{INDEX_DIGITS}d}.{claim}.failed"


def result_key(mission_id: str) -> str:
    return f"{RESULTS_PREFIX}{mission_id}/result.out"


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


def parse_outcome_key(key: str) -> Outcome | None:
    """The outcome an object key reports, or None for anything else in the bucket."""
    m = _OUTCOME.match(key)
    if m is None:
        return None
    return Outcome(m["mission"], int(m["index"]), m["kind"] == "out", int(m["claim"]))


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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no exit code
