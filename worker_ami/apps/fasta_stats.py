"""fasta-stats: per FASTA record of the chunk, its name, length, GC fraction and a short digest.

Meant for `bytes` mode with `align: fasta`: each transaction gets the records whose `>` lies in
its byte range (none, for a chunk inside one long record: then it writes an empty part), so the
merged output of all chunks equals one run over the whole file. Lines before the first record
(a preamble) are not a record and are skipped, as are blank lines; a record's sequence is its
lines joined, case folded.

    <name: the header up to its first blank>  <length>  <GC fraction, 4 decimals>  <sha256[:16]>
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path


def records(lines: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """(name, sequence) of each record; lines before the first header are skipped."""
    name: bytes | None = None
    sequence: list[bytes] = []
    for raw in lines:
        line = raw.strip()
        if line.startswith(b">"):
            if name is not None:
                yield name, b"".join(sequence)
            name, sequence = (line[1:].split() or [b""])[0], []
        elif line and name is not None:
            sequence.append(line.upper())
    if name is not None:
        yield name, b"".join(sequence)


def stats(lines: Iterable[bytes]) -> Iterator[str]:
    for name, seq in records(lines):
        gc = (seq.count(b"G") + seq.count(b"C")) / len(seq) if seq else 0.0
        digest = hashlib.sha256(seq).hexdigest()[:16]
        label = name.decode("utf-8", errors="replace")
        yield f"{label}\t{len(seq)}\t{gc:.4f}\t{digest}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fasta-stats", description=__doc__)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--end", type=int, required=True)
    args = parser.parse_args(argv)
    if not args.input.is_file():
        print(f"fasta-stats: input {args.input} not found", file=sys.stderr)
        return 2
    with open(args.input, "rb") as src, open(args.output, "w", encoding="utf-8") as out:
        out.writelines(stats(src))
    return 0


if __name__ == "__main__":
    sys.exit(main())
