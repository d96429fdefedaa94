"""Cutting an input into byte ranges on line (or record) boundaries, without reading it whole.

Pure: no AWS here. The worker hands `fetch_slice` a function that reads a byte range (a ranged
GetObject of the mission's pinned input); the scheduler feeds `LineOffsets` the input it streams
once in `lines` mode.

The rule, lithops' data partitioner's: a *boundary* is a position where a line begins (0, or
just after a newline) or, with `fasta`, where a record begins (0, or just after a newline and at a
`>`); the end of the input is one too. The aligned slice of the chunk [start, end) is
[b(start), b(end)), where b(x) is the first boundary at or after x. b(0) = 0, b(size) = size and
b never decreases, so the slices of consecutive chunks tile the input exactly: every line (every
record) is in the one chunk in which it begins, and a chunk in which none begins is empty.

Finding b(start) needs the byte before `start`; finding b(end) needs the bytes after `end` up to
the next boundary. So a worker fetches [start - 1, end + overlap), and, only when a line is
longer than the overlap, further ranges (each twice the last) until the boundary or the end of
the input; it never fetches more than its slice, the byte before it and the tail of one line
past a boundary plus one range. A chunk in which no line begins is known to be empty once its
bytes are read: it needs nothing past `end`.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterable
from typing import Literal

Align = Literal["line", "fasta"]
ALIGNS: tuple[Align, ...] = ("line", "fasta")
# Read past a chunk's end to finish its last line. Most text lines and wrapped FASTA lines are
# far shorter; a longer one costs another request (ranges grow by doubling up to MAX_FETCH).
OVERLAP_BYTES = 8 * 1024
MAX_FETCH_BYTES = 64 * 1024 * 1024
# Lines mode: the index of slice offsets, one little-endian unsigned 64-bit integer per slice.
OFFSET_BYTES = 8

_NEWLINE = b"\n"
_RECORD = b"\n>"


def first_boundary(buf: bytes, base: int, at_least: int, align: Align) -> int | None:
    """The first boundary p >= `at_least` that `buf` (the input's bytes from `base` on) shows:
    a newline at p - 1 (and, for `fasta`, a `>` at p, so p is inside buf). None if it shows none;
    position 0 and the input's end are the caller's to know."""
    lo = max(at_least - 1 - base, 0)
    q = buf.find(_NEWLINE if align == "line" else _RECORD, lo)
    return None if q < 0 else base + q + 1


class SliceCutter:
    """The aligned slice of one chunk, found in the bytes read from `position` on, piece by piece.

    `feed` takes the next bytes of the input (from `position`) and returns those of them that are
    in the slice; `done` once the slice is complete. `begin`/`finish` are its bounds once known.
    """

    def __init__(self, start: int, end: int, size: int, align: Align = "line") -> None:
        if not 0 <= start <= end <= size:
            raise ValueError(f"chunk [{start}, {end}) is not within an input of {size} bytes")
        if align not in ALIGNS:
            raise ValueError(f"unknown alignment {align!r}")
        self.start, self.end, self.size, self.align = start, end, size, align
        self.position = max(start - 1, 0)  # the next byte to feed
        self._prev = b""  # the byte before `position`, once fed (a boundary test needs it)
        self.begin: int | None = 0 if start == 0 else None
        self.finish: int | None = None
        if start == end:  # an empty chunk (plans never make one): an empty slice
            self.begin = self.finish = start

    @property
    def done(self) -> bool:
        return self.finish is not None

    def feed(self, piece: bytes) -> bytes:
        if self.done or not piece:
            return b""
        base = self.position
        after = base + len(piece)
        if after > self.size:
            raise ValueError("more bytes than the input holds")
        buf, buf_base = self._prev + piece, base - len(self._prev)
        if self.begin is None:
            p = first_boundary(buf, buf_base, self.start, self.align)
            if p is not None and p < self.end:
                self.begin = p
            elif p is not None or after >= self.end:
                # No line begins in [start, end): every position below `end` was tested.
                self.begin = self.finish = self.end
        if self.begin is not None and self.finish is None:
            if self.end < self.size:
                p = first_boundary(buf, buf_base, self.end, self.align)
                if p is not None:
                    self.finish = p
            if self.finish is None and after == self.size:
                self.finish = self.size
        self._prev, self.position = piece[-1:], after
        if self.begin is None:
            return b""
        lo = max(self.begin, base) - base
        hi = min(self.finish if self.finish is not None else after, after) - base
        return piece[lo:hi] if hi > lo else b""


# read(first, stop): the input's bytes [first, stop) (fewer if the input ends sooner), in pieces.
RangeReader = Callable[[int, int], Iterable[bytes]]


def fetch_slice(
    read: RangeReader,
    write: Callable[[bytes], object],
    start: int,
    end: int,
    size: int,
    align: Align = "line",
    overlap: int = OVERLAP_BYTES,
) -> tuple[int, int]:
    """Write the aligned slice of the chunk [start, end) from ranged reads; its bounds.

    The first read is [start - 1, end + overlap); if the slice's last line runs on past that,
    further reads follow, each twice as long as the one before (up to MAX_FETCH_BYTES).
    """
    cutter = SliceCutter(start, end, size, align)
    stop, step = min(end + overlap, size), max(overlap, 1)
    while not cutter.done:
        first = cutter.position
        if stop <= first:
            step = min(step * 2, MAX_FETCH_BYTES)
            stop = min(first + step, size)
        pieces = iter(read(first, stop))
        try:
            for piece in pieces:
                data = cutter.feed(piece)
                if data:
                    write(data)
                if cutter.done:
                    break
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # a generator's own cleanup: its response body is released at once
        if cutter.position == first and not cutter.done:
            raise ValueError(f"no bytes at {first} of an input of {size} bytes")
    assert cutter.begin is not None and cutter.finish is not None
    return cutter.begin, cutter.finish


def copy_range(read: RangeReader, write: Callable[[bytes], object], first: int, stop: int) -> int:
    """Write the bytes [first, stop) (lines mode: a slice whose bounds are known); how many."""
    copied = 0
    for piece in read(first, stop):
        write(piece)
        copied += len(piece)
    if copied != stop - first:
        raise ValueError(f"read {copied} bytes of the range [{first}, {stop})")
    return copied


class LineOffsets:
    """Lines mode, in the scheduler's one streamed pass: the line count, and the byte offset
    where every slice of `lines_per_slice` lines begins (so each worker fetches only its own).

    Only the few pieces that hold a slice's first line are searched past a `count`. Past
    `max_slices` offsets it only counts (the planner refuses such a mission anyway), so memory
    stays bounded by the stage's transaction limit, not by the input's line count."""

    def __init__(self, lines_per_slice: int, max_slices: int | None = None) -> None:
        if lines_per_slice < 1:
            raise ValueError("lines_per_slice must be at least 1")
        self._per = lines_per_slice
        self._max = max_slices
        self._newlines = 0
        self._position = 0
        self._last = b""
        self.offsets = array("Q", [0])

    def feed(self, piece: bytes) -> None:
        found = piece.count(_NEWLINE)
        target = len(self.offsets) * self._per  # the newline that ends the next slice's lines
        at, seen = 0, self._newlines  # newlines before piece[at:]
        while target <= self._newlines + found and not self._full():
            q = _nth_newline(piece, at, target - seen)
            self.offsets.append(self._position + q + 1)
            at, seen = q + 1, target
            target += self._per
        self._newlines += found
        self._position += len(piece)
        self._last = piece[-1:] or self._last

    def _full(self) -> bool:
        return self._max is not None and len(self.offsets) > self._max

    @property
    def lines(self) -> int:
        """Lines of the input (a last line without a newline counts)."""
        return self._newlines + (1 if self._last and self._last != _NEWLINE else 0)

    def slice_offsets(self) -> array:
        """One offset per slice (an offset at the very end, after a last newline, begins none)."""
        offsets = array("Q", self.offsets)
        if len(offsets) > 1 and offsets[-1] >= self._position:
            offsets.pop()
        return offsets


def encode_offsets(offsets: array) -> bytes:
    out = array("Q", offsets)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def offset_range(index: int) -> tuple[int, int]:
    """The bytes of the index that hold slice `index`'s offset and the next slice's."""
    first = index * OFFSET_BYTES
    return first, first + 2 * OFFSET_BYTES


def decode_slice_bounds(entries: bytes, input_bytes: int) -> tuple[int, int]:
    """A slice's [begin, end) from its index entry and the next (none after the last slice)."""
    if len(entries) not in (OFFSET_BYTES, 2 * OFFSET_BYTES):
        raise ValueError(f"a line index entry is {OFFSET_BYTES} bytes, not {len(entries)}")
    begin = int.from_bytes(entries[:OFFSET_BYTES], "little")
    end = int.from_bytes(entries[OFFSET_BYTES:], "little") if len(entries) > 8 else input_bytes
    if not 0 <= begin < end <= input_bytes:
        raise ValueError(f"line index gives [{begin}, {end}) in an input of {input_bytes} bytes")
    return begin, end


def _nth_newline(buf: bytes, lo: int, n: int) -> int:
    """Index of the `n`-th newline of buf[lo:] (n >= 1; the caller knows there are that many).

    Few: one find each. Many: gallop over counts (C speed), then halve the window."""
    if n > 32:
        pos, step = lo, 4096
        while True:
            hi = min(pos + step, len(buf))
            c = buf.count(_NEWLINE, pos, hi)
            if c >= n:
                break
            n, pos, step = n - c, hi, step * 2
        while hi - pos > 512:  # the n-th newline from pos lies in [pos, hi)
            mid = (pos + hi) // 2
            c = buf.count(_NEWLINE, pos, mid)
            if c >= n:
                hi = mid
            else:
                n, pos = n - c, mid
        lo = pos
    q = lo - 1
    for _ in range(n):
        q = buf.find(_NEWLINE, q + 1)
    return q
