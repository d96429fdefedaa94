"""seq-stats: per sequence line of the slice, its length, GC fraction and a short digest.

Input is one sequence per line (in `lines` mode each transaction gets its own slice of lines);
`--start` is the slice's first line number, so output lines carry global line numbers and the
merged output equals one run over the whole file. Blank lines are skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path


def stats(lines: Iterable[bytes], first_line: int) -> Iterator[str]:
    for number, raw in enumerate(lines, start=first_line):
        seq = raw.strip().upper()
        if not seq:
            continue
        gc = (seq.count(b"G") + seq.count(b"C")) / len(seq)
        digest = hashlib.sha256(seq).hexdigest()[:16]
        yield f"{number}\t{len(seq)}\t{gc:.4f}\t{digest}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seq-stats", description=__doc__)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--end", type=int, required=True)
    args = parser.parse_args(argv)
    if not args.input.is_file():
        print(f"seq-stats: input {args.input} not found", file=sys.stderr)
        return 2
    with open(args.input, "rb") as src, open(args.output, "w", encoding="ascii") as out:
        out.writelines(stats(src, args.start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
