"""kmer-match: which reference sequences share k-mers with the sample, for references [start, end).

The reference data set is generated from a seed (reference `i` is the same everywhere), so a
transaction needs only its interval, and the merged output of all transactions equals
`match(sample, 0, N)` run in one process. Output lines, for references with at least one hit:

    ref_<id>  <shared k-mers>  <distinct k-mers of the reference>  <containment, 6 decimals>
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

_NOT_BASE = re.compile(r"[^ACGT]+")


def reference_sequence(seed: int, ref_id: int, length: int) -> str:
    rng = random.Random(f"lighthpc-ref:{seed}:{ref_id}")  # str seeds hash with SHA-512: stable
    return "".join(rng.choices("ACGT", k=length))


def kmers(sequence: str, k: int) -> set[str]:
    found: set[str] = set()
    for run in _NOT_BASE.split(sequence.upper()):
        found.update(run[i : i + k] for i in range(len(run) - k + 1))
    return found


def read_sequences(lines: Iterable[str]) -> Iterator[str]:
    """Sequences of a FASTA file (a record's lines joined) or of a plain file (one per line)."""
    record: list[str] = []
    fasta = False
    for line in lines:
        line = line.strip()
        if line.startswith(">"):
            if record:
                yield "".join(record)
            record, fasta = [], True
        elif line and fasta:
            record.append(line)
        elif line:
            yield line
    if record:
        yield "".join(record)


def sample_kmers(path: Path, k: int) -> set[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        found: set[str] = set()
        for sequence in read_sequences(f):
            found |= kmers(sequence, k)
    return found


def match(
    sample: set[str], start: int, end: int, *, k: int, seed: int, ref_length: int
) -> Iterator[str]:
    for ref_id in range(start, end):
        ref = kmers(reference_sequence(seed, ref_id, ref_length), k)
        shared = len(ref & sample)
        if shared:
            yield f"ref_{ref_id:08d}\t{shared}\t{len(ref)}\t{shared / len(ref):.6f}\n"


def demo_sample(seed: int, ref_ids: Iterable[int], ref_length: int, fragment: int = 300) -> str:
    """A FASTA sample built from fragments of some references (with point mutations), so a
    mission has real hits to find."""
    rng = random.Random(f"lighthpc-sample:{seed}")
    out = []
    for n, ref_id in enumerate(ref_ids):
        ref = reference_sequence(seed, ref_id, ref_length)
        at = rng.randrange(0, max(1, ref_length - fragment))
        piece = list(ref[at : at + fragment])
        for _ in range(len(piece) // 50):
            piece[rng.randrange(len(piece))] = rng.choice("ACGT")
        out.append(f">read{n} from ref_{ref_id}\n{''.join(piece)}\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kmer-match", description=__doc__)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--end", type=int, required=True)
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ref-length", type=int, default=2000)
    args = parser.parse_args(argv)
    if not args.input.is_file():
        print(f"kmer-match: input {args.input} not found", file=sys.stderr)
        return 2
    sample = sample_kmers(args.input, args.k)
    if not sample:
        print(
            f"kmer-match: the input has no k-mers of length {args.k} (A, C, G, T)", file=sys.stderr
        )
        return 2
    with open(args.output, "w", encoding="ascii") as out:
        out.writelines(
            match(
                sample, args.start, args.end, k=args.k, seed=args.seed, ref_length=args.ref_length
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
