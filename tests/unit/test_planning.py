"""planning: exact, contiguous splits of intervals and line ranges; fleet sizing."""

from __future__ import annotations

import itertools

import pytest

from chalicelib.planning import Plan, Slice, instances_needed, transaction_count_for_lines


def split_interval(start: int, end: int, count: int):
    return Plan.by_count(start, end, count).slices()


def split_lines(total: int, per: int):
    return Plan.by_lines(total, per).slices()


INTERVAL_CASES = [
    (0, 10, 1),
    (0, 10, 3),
    (0, 10, 10),
    (0, 100, 7),
    (5, 6, 1),
    (-10, 20, 3),
    (-17, -3, 4),
    (-5, 5, 10),
    (1_000_000, 1_000_123, 11),
    (0, 2**40, 9),
]


@pytest.mark.parametrize(("start", "end", "count"), INTERVAL_CASES)
def test_split_interval_covers_exactly(start: int, end: int, count: int) -> None:
    slices = list(split_interval(start, end, count))
    assert len(slices) == count
    assert [s.index for s in slices] == list(range(count))
    assert slices[0].start == start
    assert slices[-1].end == end
    for before, after in itertools.pairwise(slices):
        assert before.end == after.start  # contiguous, in order
    sizes = [s.end - s.start for s in slices]
    assert min(sizes) >= 1
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == end - start
    # The longer slices come first.
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize(("start", "end", "count"), [c for c in INTERVAL_CASES if c[1] < 10**6])
def test_split_interval_concatenates_to_the_whole_range(start: int, end: int, count: int) -> None:
    joined = [n for s in split_interval(start, end, count) for n in range(s.start, s.end)]
    assert joined == list(range(start, end))


def test_split_interval_known_values() -> None:
    assert list(split_interval(0, 10, 3)) == [Slice(0, 0, 4), Slice(1, 4, 7), Slice(2, 7, 10)]
    assert list(split_interval(-3, 0, 3)) == [Slice(0, -3, -2), Slice(1, -2, -1), Slice(2, -1, 0)]


def test_count_equal_to_length_gives_unit_slices() -> None:
    assert list(split_interval(3, 7, 4)) == [Slice(i, 3 + i, 4 + i) for i in range(4)]


@pytest.mark.parametrize(
    ("start", "end", "count"),
    [(0, 10, 11), (0, 0, 1), (5, 5, 1), (10, 0, 1), (0, 10, 0), (0, 10, -1), (-2, -3, 1)],
)
def test_split_interval_rejects_impossible_splits(start: int, end: int, count: int) -> None:
    with pytest.raises(ValueError, match="non-empty slices"):
        list(split_interval(start, end, count))


def test_split_interval_validates_at_the_call() -> None:
    with pytest.raises(ValueError):
        split_interval(0, 1, 2)


@pytest.mark.parametrize(("start", "end", "count"), [(0, 10, 3), (-7, 50, 7), (5, 6, 1)])
def test_plan_slice_is_o1_and_agrees_with_the_split(start: int, end: int, count: int) -> None:
    plan = Plan.by_count(start, end, count)
    assert [plan.slice(i) for i in range(count)] == list(split_interval(start, end, count))
    with pytest.raises(IndexError):
        plan.slice(count)


def test_split_lines_last_slice_is_short() -> None:
    assert list(split_lines(10, 4)) == [Slice(0, 0, 4), Slice(1, 4, 8), Slice(2, 8, 10)]


def test_split_lines_exact_multiple() -> None:
    assert list(split_lines(9, 3)) == [Slice(0, 0, 3), Slice(1, 3, 6), Slice(2, 6, 9)]


@pytest.mark.parametrize(("total", "per"), [(1, 1), (1, 100), (100, 1), (1000, 7), (12, 12)])
def test_split_lines_covers_every_line_once(total: int, per: int) -> None:
    slices = list(split_lines(total, per))
    assert [n for s in slices for n in range(s.start, s.end)] == list(range(total))
    assert all(s.end - s.start == per for s in slices[:-1])
    assert 1 <= slices[-1].end - slices[-1].start <= per
    assert len(slices) == transaction_count_for_lines(total, per)


def test_split_lines_zero_lines_gives_no_slices() -> None:
    assert list(split_lines(0, 5)) == []


@pytest.mark.parametrize("per", [0, -1])
def test_split_lines_rejects_non_positive_width(per: int) -> None:
    with pytest.raises(ValueError):
        list(split_lines(10, per))


@pytest.mark.parametrize(
    ("total", "per", "expected"),
    [(0, 5, 0), (1, 5, 1), (5, 5, 1), (6, 5, 2), (10, 4, 3), (9, 3, 3), (10**9, 1, 10**9)],
)
def test_transaction_count_for_lines(total: int, per: int, expected: int) -> None:
    assert transaction_count_for_lines(total, per) == expected


@pytest.mark.parametrize(
    ("transactions", "slots", "cap", "expected"),
    [
        (0, 1, 4, 0),
        (-3, 1, 4, 0),
        (1, 1, 4, 1),
        (3, 1, 4, 3),
        (4, 1, 4, 4),
        (100, 1, 4, 4),  # capped
        (7, 2, 10, 4),  # ceil(7 / 2)
        (8, 2, 10, 4),
        (9, 2, 10, 5),
        (1, 256, 10, 1),
        (1000, 16, 50, 50),
    ],
)
def test_instances_needed(transactions: int, slots: int, cap: int, expected: int) -> None:
    assert instances_needed(transactions, slots, cap) == expected
