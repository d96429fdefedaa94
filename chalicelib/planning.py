"""Splitting a mission into transactions, and sizing its fleet: plain functions, no AWS.

A plan is a formula, not a list: slice `i` of a mission is computed in O(1) from the plan, so
planning writes nothing per transaction. A transaction's item is created when a worker claims
it (see `Store.claim_next`); until then it exists implicitly as PENDING.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from chalicelib.config import CountSplit, LinesSplit


@dataclass(frozen=True)
class Slice:
    index: int
    start: int  # inclusive
    end: int  # exclusive


@dataclass(frozen=True)
class Plan:
    """`count` slices of [start, end) (sizes differ by at most one), or lines in fixed steps."""

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
    def for_split(cls, split: CountSplit | LinesSplit, total_lines: int | None) -> Plan:
        """The plan of a config's `split` (count mode, or lines mode given the line count)."""
        if isinstance(split, CountSplit):
            return cls.by_count(split.interval.start, split.interval.end, split.count)
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


def instances_needed(transactions: int, slots_per_instance: int, max_instances: int) -> int:
    """Enough instances to run every transaction at once, within the mission's cap."""
    if transactions <= 0:
        return 0
    return min(max_instances, -(-transactions // slots_per_instance))
