"""Splitting a mission into transactions, and sizing its fleet: plain functions, no AWS.

A plan is a formula, not a list: slice `i` of a mission is computed in O(1) from the plan, so
planning writes nothing per transaction. A transaction's item is created when a worker claims
it (see `Store.claim_next`); until then it exists implicitly as PENDING.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from chalicelib.config import BytesSplit, CountSplit, LinesSplit


@dataclass(frozen=True)
class Slice:
    index: int
    start: int  # inclusive
    end: int  # exclusive


@dataclass(frozen=True)
class Plan:
    """`count` slices of [start, end) (sizes differ by at most one), or lines in fixed steps.

    Bytes mode is the first kind over [0, input size): slice `i` is a byte range of the input,
    which its worker cuts to whole lines or records (`chalicelib.splitting`)."""

    count: int
    start: int = 0
    end: int = 0
    lines_per_transaction: int | None = None
    total_lines: int | None = None

    @classmethod
    def by_count(cls, start: int, end: int, count: int) -> Plan:
        if count < 1 or end - start < count:
            raise ValueError(f"cannot split [{start}, {end}) into {count} non-empty slices")
        return cls(count=count, start=start, end=end)

    @classmethod
    def by_lines(cls, total_lines: int, lines_per_transaction: int) -> Plan:
        if lines_per_transaction < 1:
            raise ValueError("lines_per_transaction must be at least 1")
        count = transaction_count_for_lines(total_lines, lines_per_transaction)
        return cls(count, lines_per_transaction=lines_per_transaction, total_lines=total_lines)

    @classmethod
    def by_bytes(cls, input_bytes: int, chunks: int | None, chunk_bytes: int | None) -> Plan:
        """Byte ranges of [0, input_bytes): `chunks` of them (at most one per byte), or as few
        as hold at most `chunk_bytes` each; either way their sizes differ by at most one."""
        if input_bytes < 1:
            raise ValueError("an empty input has no byte ranges")
        count = chunk_count_for_bytes(input_bytes, chunks, chunk_bytes)
        return cls.by_count(0, input_bytes, count)

    @classmethod
    def for_split(
        cls,
        split: CountSplit | LinesSplit | BytesSplit,
        total_lines: int | None,
        input_bytes: int | None = None,
    ) -> Plan:
        """The plan of a config's `split` (count mode; lines mode given the line count; bytes
        mode given the input's size: empty until it is known)."""
        if isinstance(split, CountSplit):
            return cls.by_count(split.interval.start, split.interval.end, split.count)
        if isinstance(split, BytesSplit):
            if not input_bytes:
                return cls(count=0)
            return cls.by_bytes(input_bytes, split.chunks, split.chunk_bytes)
        return cls.by_lines(total_lines or 0, split.lines_per_transaction)

    def slice(self, index: int) -> Slice:
        if not 0 <= index < self.count:
            raise IndexError(f"slice {index} of a {self.count}-slice plan")
        if self.lines_per_transaction is not None:
            first = index * self.lines_per_transaction
            last = min(first + self.lines_per_transaction, self.total_lines or 0)
            return Slice(index, first, last)
        # The first `length % count` slices are one longer, so the slices cover the interval
        # exactly and in order: the parts concatenated in index order equal one whole run.
        base, extra = divmod(self.end - self.start, self.count)
        first = self.start + index * base + min(index, extra)
        return Slice(index, first, first + base + (1 if index < extra else 0))

    def slices(self) -> Iterator[Slice]:
        return (self.slice(i) for i in range(self.count))


def transaction_count_for_lines(total_lines: int, lines_per_transaction: int) -> int:
    return -(-total_lines // lines_per_transaction)


def chunk_count_for_bytes(input_bytes: int, chunks: int | None, chunk_bytes: int | None) -> int:
    if chunks is not None:
        return min(chunks, input_bytes)
    if chunk_bytes is None or chunk_bytes < 1:
        raise ValueError("bytes mode needs chunks or chunk_bytes")
    return -(-input_bytes // chunk_bytes)


def instances_needed(transactions: int, slots_per_instance: int, max_instances: int) -> int:
    """Enough instances to run every transaction at once, within the mission's cap."""
    if transactions <= 0:
        return 0
    return min(max_instances, -(-transactions // slots_per_instance))
