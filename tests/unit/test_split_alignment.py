"""Byte-range splitting without AWS: chunks cut at line (record) boundaries tile the input exactly,
whatever the chunk sizes, read sizes and line lengths; the line index of lines mode."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.planning import Plan
from chalicelib.splitting import (
    LineOffsets,
    SliceCutter,
    _nth_newline,
    copy_range,
    decode_slice_bounds,
    encode_offsets,
    fetch_slice,
    first_boundary,
    offset_range,
)


def boundaries(data: bytes, align: str) -> list[int]:
    """Every position where a line (record) begins, and the end: the rule, by brute force."""
    found = [0]
    for p in range(1, len(data)):
        if data[p - 1 : p] == b"\n" and (align == "line" or data[p : p + 1] == b">"):
            found.append(p)
    return [*found, len(data)] if len(data) > 0 else found


def aligned(data: bytes, x: int, align: str) -> int:
    return min(p for p in boundaries(data, align) if p >= x)


class Source:
    """An input read by ranges in pieces of random sizes; counts the bytes it hands out."""

    def __init__(self, data: bytes, rng: random.Random) -> None:
        self.data, self.rng = data, rng
        self.fetched = 0
        self.reads: list[tuple[int, int]] = []

    def read(self, first: int, stop: int):
        assert 0 <= first < stop <= len(self.data), (first, stop)
        self.reads.append((first, stop))
        at = first
        while at < stop:
            n = min(self.rng.randint(1, 7), stop - at)
            piece = self.data[at : at + n]
            self.fetched += len(piece)  # what S3 sends is the whole range; count what is taken
            at += n
            yield piece


def cut_all(data: bytes, plan: Plan, align: str, overlap: int, seed: int):
    rng = random.Random(seed)
    out = []
    for s in plan.slices():
        source, parts = Source(data, rng), []
        bounds = fetch_slice(source.read, parts.append, s.start, s.end, len(data), align, overlap)
        out.append((s, b"".join(parts), bounds, source))
    return out


line = st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"x"))
texts = st.lists(
    st.one_of(line, st.just(b""), st.binary(min_size=20, max_size=90)), max_size=30
).map(lambda lines: b"\n".join(lines))
fasta_texts = st.lists(
    st.tuples(st.sampled_from([b">", b"", b";", b"A>"]), st.binary(max_size=40)), max_size=20
).map(lambda recs: b"\n".join(h + body.replace(b"\n", b"\n" * 2) for h, body in recs))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(texts, fasta_texts).filter(bool),
    chunks=st.integers(1, 40),
    align=st.sampled_from(["line", "fasta"]),
    overlap=st.integers(1, 24),
    seed=st.integers(0, 2**16),
)
def test_chunks_tile_the_input_and_every_line_is_in_exactly_one(data, chunks, align, overlap, seed):
    plan = Plan.by_bytes(len(data), chunks, None)
    cut = cut_all(data, plan, align, overlap, seed)
    assert b"".join(part for _, part, _, _ in cut) == data  # nothing lost, nothing twice
    starts = boundaries(data, align)[:-1] if len(data) else []
    for s, part, (begin, finish), source in cut:
        a, b = aligned(data, s.start, align), aligned(data, s.end, align)
        assert part == data[a:b]
        if part:
            assert (begin, finish) == (a, b)
        # each line (record) is in the chunk where it begins
        assert [p for p in starts if a <= p < b] == [p for p in starts if s.start <= p < s.end]
        # reads: the chunk, the byte before it, the overlap, and at most twice the rest of its
        # last line (ranges double)
        past = max(0, b - s.end) if part else 0
        assert source.fetched <= (s.end - s.start + 1) + overlap + 2 * past
    owners = [sum(1 for s, _, _, _ in cut if s.start <= p < s.end) for p in starts]
    assert all(n == 1 for n in owners)


@pytest.mark.parametrize("align", ["line", "fasta"])
def test_a_line_longer_than_the_overlap_is_fetched_in_growing_ranges(align):
    long_line = b">" + b"A" * 5000
    data = b">r1\nACGT\n" + long_line + b"\n>r3\nGG\n"
    plan = Plan.by_bytes(len(data), 4, None)
    cut = cut_all(data, plan, align, overlap=16, seed=1)
    assert b"".join(part for _, part, _, _ in cut) == data
    first = cut[0]
    # Chunk 0 ends inside the long line: ranges of 16, 32, 64 ... bytes past its end.
    lengths = [stop - start for start, stop in first[3].reads]
    assert len(lengths) > 3 and lengths[2] == 2 * lengths[1]
    # The chunks inside the long line (no line begins there) are empty.
    assert [part for _, part, _, _ in cut[1:3]] == [b"", b""]


def test_no_final_newline_and_a_last_chunk_of_one_partial_line():
    data = b"one\ntwo\nthree"
    cut = cut_all(data, Plan.by_bytes(len(data), 13, None), "line", overlap=2, seed=3)
    parts = [part for _, part, _, _ in cut]
    assert b"".join(parts) == data
    assert [p for p in parts if p] == [b"one\n", b"two\n", b"three"]


def test_a_chunk_starting_exactly_at_a_line_keeps_that_line():
    data = b"aaaa\nbbbb\ncccc\n"  # chunks of 5 bytes start exactly at each line
    cut = cut_all(data, Plan.by_bytes(len(data), 3, None), "line", overlap=1, seed=0)
    assert [part for _, part, _, _ in cut] == [b"aaaa\n", b"bbbb\n", b"cccc\n"]


def test_fasta_cuts_only_before_a_header():
    data = b"preamble\n>a\nAC\nGT\n>b\nTT\n"
    for chunks in range(1, len(data) + 1):
        cut = cut_all(data, Plan.by_bytes(len(data), chunks, None), "fasta", 3, chunks)
        parts = [part for _, part, _, _ in cut if part]
        assert b"".join(parts) == data
        assert all(p.startswith(b">") for p in parts[1:])  # never inside a record
        assert any(b">a\nAC\nGT\n" in p for p in parts)  # a record's lines stay together


def test_an_empty_chunk_needs_nothing_past_its_end():
    data = b"x" * 100 + b"\n"
    source = Source(data, random.Random(0))
    parts: list[bytes] = []
    fetch_slice(source.read, parts.append, 40, 60, len(data), "line", overlap=8)
    assert parts == [] and source.reads == [(39, 68)]
    assert source.fetched < 60 - 39 + 7  # it stops at the piece (up to 7 bytes) holding byte 59


def test_cutter_refuses_a_chunk_outside_the_input():
    with pytest.raises(ValueError):
        SliceCutter(5, 12, 10)
    with pytest.raises(ValueError):
        SliceCutter(0, 1, 1, "words")  # type: ignore[arg-type]
    assert SliceCutter(3, 3, 10).done


def test_first_boundary():
    assert first_boundary(b"ab\ncd", 10, 10, "line") == 13
    assert first_boundary(b"ab\ncd", 10, 14, "line") is None
    assert first_boundary(b"a\n>b\n", 0, 0, "fasta") == 2
    assert first_boundary(b"a\nb\n", 0, 0, "fasta") is None


def test_byte_plans():
    assert Plan.by_bytes(10, 3, None).count == 3
    assert Plan.by_bytes(5, 1000, None).count == 5  # at most one chunk per byte
    plan = Plan.by_bytes(10, None, 4)  # chunks of at most 4 bytes: 3 of them
    assert [(s.start, s.end) for s in plan.slices()] == [(0, 4), (4, 7), (7, 10)]
    assert Plan.by_bytes(2**30, 1000, None).slice(999).end == 2**30
    with pytest.raises(ValueError):
        Plan.by_bytes(0, 1, None)


# ---- lines mode: the scheduler's index of slice offsets ------------------------------------


def brute_offsets(data: bytes, per: int) -> list[int]:
    starts = [0] + [i + 1 for i, c in enumerate(data) if c == 10 and i + 1 < len(data)]
    return starts[::per]


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=5).map(lambda b: b.replace(b"\n", b"")), max_size=200),
    final_newline=st.booleans(),
    per=st.integers(1, 70),
    seed=st.integers(0, 1000),
)
def test_line_offsets_match_a_brute_force_count(lines, final_newline, per, seed):
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    rng, index, at = random.Random(seed), LineOffsets(per), 0
    while at < len(data):
        n = rng.randint(1, 50)
        index.feed(data[at : at + n])
        at += n
    assert index.lines == data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    assert list(index.slice_offsets()) == (brute_offsets(data, per) if data else [0])
    if data:
        assert len(index.slice_offsets()) == -(-index.lines // per)
        # each slice read back from the index holds exactly its lines
        encoded = encode_offsets(index.slice_offsets())
        got = []
        for i in range(len(index.slice_offsets())):
            first, stop = offset_range(i)
            begin, end = decode_slice_bounds(encoded[first:stop], len(data))
            got.append(data[begin:end])
        assert b"".join(got) == data
        assert all(g.count(b"\n") == per for g in got[:-1])


def test_line_offsets_stop_recording_past_the_limit():
    index = LineOffsets(1, max_slices=10)
    index.feed(b"x\n" * 1000)
    assert index.lines == 1000 and len(index.offsets) == 11


def test_nth_newline_far_away():
    buf = (b"a" * 37 + b"\n") * 50_000
    for n in (1, 31, 33, 4000, 49_999):
        assert _nth_newline(buf, 0, n) == 38 * n - 1
    assert _nth_newline(buf, 38 * 10, 100) == 38 * 110 - 1


def test_copy_range_refuses_a_short_read():
    data = b"0123456789"
    with pytest.raises(ValueError):
        copy_range(lambda a, b: [data[a : b - 1]], lambda _: None, 2, 8)
    out: list[bytes] = []
    assert copy_range(lambda a, b: [data[a:b]], out.append, 2, 8) == 6 and out == [b"234567"]


def test_decode_refuses_a_broken_index():
    with pytest.raises(ValueError):
        decode_slice_bounds(b"\x00" * 5, 10)
    with pytest.raises(ValueError):
        decode_slice_bounds((20).to_bytes(8, "little"), 10)
