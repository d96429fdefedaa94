"""kmer-top: the top N references of kmer-match's merged output, a reduce run once over it.

Run it as its own mission over the merged output, with a count split of one transaction: every
transaction reads the whole input (`--start` and `--end` are accepted and ignored), so more than
one would only repeat the answer. References sharing no k-mer are left out; the rest are ranked
by containment (descending), then shared k-mers (descending), then name (ascending):

    <rank from 1>  ref_<id>  <shared k-mers>  <distinct k-mers of the reference>  <containment>

The containment is copied as given. The input is streamed: only the best N lines are held.
"""

from __future__ import annotations

import argparse
import heapq
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

TOP_DEFAULT, TOP_MAX = 10, 100_000

# name, shared, distinct, containment; the name is printable ASCII without blanks.
_LINE = re.compile(r"([!-~]+)\t(\d+)\t(\d+)\t(\d+(?:\.\d+)?)", re.ASCII)

_Hit = tuple[str, int, int, str]  # name, shared, distinct, containment as given


class MalformedLine(ValueError):
    """A line that is not one of kmer-match's; `number` counts from 1."""

    def __init__(self, number: int, reason: str) -> None:
        super().__init__(f"line {number}: {reason}")
        self.number = number


def _hits(lines: Iterable[str]) -> Iterator[tuple[float, _Hit]]:
    for number, line in enumerate(lines, start=1):
        text = line.rstrip("\n").removesuffix("\r")
        found = _LINE.fullmatch(text)
        if found is None:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise MalformedLine(
                number, f"expected 'ref<TAB>shared<TAB>length<TAB>fraction', got {shown!r}"
            )
        name, containment = found[1], found[4]
        shared, distinct, fraction = int(found[2]), int(found[3]), float(containment)
        if distinct == 0 or shared > distinct or fraction > 1:
            raise MalformedLine(number, "need 0 <= shared <= length, length > 0 and fraction <= 1")
        if shared > 0:
            yield fraction, (name, shared, distinct, containment)


def _rank(item: tuple[float, _Hit]) -> tuple[float, int, str]:
    fraction, (name, shared, _, _) = item
    return -fraction, -shared, name


def top(lines: Iterable[str], n: int) -> list[str]:
    """The output lines for the best `n` hits of kmer-match output lines (in any order).

    Raises MalformedLine on the first line that is not kmer-match's.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    best = heapq.nsmallest(n, _hits(lines), key=_rank)  # a heap of n: streams the rest
    return [
        f"{rank}\t{name}\t{shared}\t{distinct}\t{containment}\n"
        for rank, (_, (name, shared, distinct, containment)) in enumerate(best, start=1)
    ]


def _top_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= TOP_MAX:
        raise argparse.ArgumentTypeError(f"must be between 1 and {TOP_MAX}, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kmer-top", description=__doc__)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--start", type=int, required=True)  # the whole input is one reduce
    parser.add_argument("--end", type=int, required=True)
    parser.add_argument("--top", type=_top_count, default=TOP_DEFAULT)
    args = parser.parse_args(argv)
    if not args.input.is_file():
        print(f"kmer-top: input {args.input} not found", file=sys.stderr)
        return 2
    # Bytes that are not ASCII survive as surrogates and fail the line pattern, by line number.
    with open(args.input, encoding="ascii", errors="surrogateescape", newline="\n") as src:
        try:
            lines = top(src, args.top)
        except MalformedLine as e:
            print(f"kmer-top: {args.input}: {e}", file=sys.stderr)
            return 2
    with open(args.output, "w", encoding="ascii") as out:
        out.writelines(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
