"""Splitting a mission into transactions, and sizing its fleet: plain functions, no AWS."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Slice:
    index: int
    start: int  # inclusive
    end: int  # exclusive


def split_interval(start: int, end: int, count: int) -> Iterator[Slice]:
    """`count` contiguous slices of [start, end) whose sizes differ by at most one.

    The first `length % count` slices are one longer, so the slices cover the interval exactly
    and in order: concatenating the parts in index order equals one run over the whole interval.
    """
    length = end - start
    if count < 1 or length < count:
        raise ValueError(f"cannot split [{start}, {end}) into {count} non-empty slices")
    base, extra = divmod(length, count)
    cursor = start
    for index in range(count):
        size = base + (1 if index < extra else 0)
        yield Slice(index, cursor, cursor + size)
        cursor += size


def split_lines(total_lines: int, lines_per_transaction: int) -> Iterator[Slice]:
    """Slices of line numbers [start, end), `lines_per_transaction` each (the last may be short)."""
    if lines_per_transaction < 1:
        raise ValueError("lines_per_transaction must be at least 1")
    for index, start in enumerate(range(0, total_lines, lines_per_transaction)):
        yield Slice(index, start, min(start + lines_per_transaction, total_lines))


def transaction_count_for_lines(total_lines: int, lines_per_transaction: int) -> int:
    return -(-total_lines // lines_per_transaction)


def instances_needed(transactions: int, slots_per_instance: int, max_instances: int) -> int:
    """Enough instances to run every transaction at once, within the mission's cap."""
    if transactions <= 0:
        return 0
    return min(max_instances, -(-transactions // slots_per_instance))
