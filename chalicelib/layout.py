"""Where things live in the result bucket. Parts sort by index, so a listing is the merge order."""

from __future__ import annotations

import re
from dataclasses import dataclass

PARTS_PREFIX = "parts/"
INDEX_DIGITS = 8  # zero-padded, so keys sort in index order
MAX_TRANSACTIONS_EVER = 10**INDEX_DIGITS
_OUTCOME = re.compile(
    rf"^parts/(?P<mission>[^/]+)/(?P<index>\d{{{INDEX_DIGITS}}})\.(?P<kind>out|failed)$"
)
RESULTS_PREFIX = "results/"


def part_key(mission_id: str, index: int) -> str:
    return f"{PARTS_PREFIX}{mission_id}/{index:0{INDEX_DIGITS}d}.out"


def failure_key(mission_id: str, index: int) -> str:
    """A failure marker: a transaction out of attempts reports through the same event path."""
    return f"{PARTS_PREFIX}{mission_id}/{index:0{INDEX_DIGITS}d}.failed"


def result_key(mission_id: str) -> str:
    return f"{RESULTS_PREFIX}{mission_id}/result.out"


@dataclass(frozen=True)
class Outcome:
    mission_id: str
    index: int
    succeeded: bool


def parse_outcome_key(key: str) -> Outcome | None:
    """The outcome an object key reports, or None for anything else in the bucket."""
    m = _OUTCOME.match(key)
    if m is None:
        return None
    return Outcome(m["mission"], int(m["index"]), m["kind"] == "out")
