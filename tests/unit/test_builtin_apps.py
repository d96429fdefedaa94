"""The built-in apps: deterministic references, and parts that concatenate to the whole run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from chalicelib.planning import Plan
from worker_ami.apps import kmer_match, seq_stats

K, SEED, REF_LENGTH = 8, 11, 200
N_REFS = 60


@pytest.fixture(scope="module")
def sample() -> set[str]:
    fasta = kmer_match.demo_sample(SEED, [3, 17, 41], REF_LENGTH, fragment=80)
    found: set[str] = set()
    for sequence in kmer_match.read_sequences(fasta.splitlines()):
        found |= kmer_match.kmers(sequence, K)
    return found


def run_match(sample: set[str], start: int, end: int) -> list[str]:
    return list(kmer_match.match(sample, start, end, k=K, seed=SEED, ref_length=REF_LENGTH))


# ---- kmer-match ----------------------------------------------------------------------------


def test_reference_sequence_is_deterministic() -> None:
    a = kmer_match.reference_sequence(7, 42, 500)
    assert a == kmer_match.reference_sequence(7, 42, 500)
    assert len(a) == 500
    assert set(a) <= set("ACGT")
    assert a != kmer_match.reference_sequence(7, 43, 500)
    assert a != kmer_match.reference_sequence(8, 42, 500)


def test_reference_sequence_is_pinned() -> None:
    # str seeds are hashed with SHA-512: reference i is the same on every machine and every run,
    # which is what lets transactions on different workers merge into one result.
    assert kmer_match.reference_sequence(7, 0, 32) == "GGCCCAAGTGTTAGTTCACGCGTGGGAGACGG"
    assert kmer_match.reference_sequence(7, 1, 32) == "CGCTGAGCCGGTCCTTGGAAAACAGCACCCCT"
    assert kmer_match.reference_sequence(7, 0, 64)[:32] == "GGCCCAAGTGTTAGTTCACGCGTGGGAGACGG"


def test_kmers_basic() -> None:
    assert kmer_match.kmers("ACGTA", 3) == {"ACG", "CGT", "GTA"}
    assert kmer_match.kmers("ACGT", 4) == {"ACGT"}
    assert kmer_match.kmers("ACG", 4) == set()
    assert kmer_match.kmers("", 4) == set()


def test_kmers_upper_cases() -> None:
    assert kmer_match.kmers("acgt", 4) == {"ACGT"}


@pytest.mark.parametrize("separator", ["N", "n", "NNNN", "-", " ", "X", "\n", "U"])
def test_kmers_split_on_non_bases(separator: str) -> None:
    # No k-mer spans the separator.
    assert kmer_match.kmers(f"ACGTA{separator}CCGGT", 4) == {"ACGT", "CGTA", "CCGG", "CGGT"}


def test_kmers_of_only_non_bases() -> None:
    assert kmer_match.kmers("NNNNNNNNNNNN", 4) == set()


def test_read_sequences_fasta() -> None:
    lines = [">r1 first\n", "ACGT\n", "TTGG\n", "\n", ">r2\n", "CCCC\n", ">empty\n", ">r3\n", "A\n"]
    assert list(kmer_match.read_sequences(lines)) == ["ACGTTTGG", "CCCC", "A"]


def test_read_sequences_strips_whitespace() -> None:
    assert list(kmer_match.read_sequences(["  >h \r\n", " AC \r\n", "GT\r\n"])) == ["ACGT"]


def test_read_sequences_single_plain_line() -> None:
    assert list(kmer_match.read_sequences(["ACGTACGT\n"])) == ["ACGTACGT"]


def test_read_sequences_nothing() -> None:
    assert list(kmer_match.read_sequences([])) == []
    assert list(kmer_match.read_sequences(["\n", ">only header\n"])) == []


def test_read_sequences_plain_file_one_per_line() -> None:
    assert list(kmer_match.read_sequences(["ACGT\n", "TTTT\n"])) == ["ACGT", "TTTT"]


def test_match_finds_the_sampled_references(sample: set[str]) -> None:
    lines = run_match(sample, 0, N_REFS)
    hits = {line.split("\t")[0] for line in lines}
    assert {"ref_00000003", "ref_00000017", "ref_00000041"} <= hits
    for line in lines:
        _ref, shared, distinct, containment = line.rstrip("\n").split("\t")
        assert 0 < int(shared) <= int(distinct)
        assert float(containment) == pytest.approx(int(shared) / int(distinct), abs=1e-6)
    # The sampled references share far more than chance does.
    by_ref = {line.split("\t")[0]: int(line.split("\t")[1]) for line in lines}
    assert by_ref["ref_00000017"] > 20


def test_match_output_is_in_reference_order(sample: set[str]) -> None:
    refs = [line.split("\t")[0] for line in run_match(sample, 0, N_REFS)]
    assert refs == sorted(refs)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 13, N_REFS])
def test_split_match_concatenates_to_the_whole_run(sample: set[str], count: int) -> None:
    whole = run_match(sample, 0, N_REFS)
    assert whole  # the property is only interesting with hits
    parts = [run_match(sample, s.start, s.end) for s in Plan.by_count(0, N_REFS, count).slices()]
    assert [line for part in parts for line in part] == whole


def test_match_is_deterministic(sample: set[str]) -> None:
    assert run_match(sample, 5, 25) == run_match(sample, 5, 25)


def test_match_on_empty_sample_is_empty() -> None:
    assert list(kmer_match.match(set(), 0, 10, k=K, seed=SEED, ref_length=REF_LENGTH)) == []


def test_demo_sample_is_deterministic() -> None:
    a = kmer_match.demo_sample(SEED, [1, 2], REF_LENGTH, fragment=50)
    assert a == kmer_match.demo_sample(SEED, [1, 2], REF_LENGTH, fragment=50)
    assert a.count(">") == 2
    assert ">read0 from ref_1\n" in a


def _kmer_args(tmp_path: Path, src: Path, start: int, end: int, name: str) -> list[str]:
    return [
        "--input", str(src), "--output", str(tmp_path / name),
        "--start", str(start), "--end", str(end),
        "--k", str(K), "--seed", str(SEED), "--ref-length", str(REF_LENGTH),
    ]  # fmt: skip


def test_kmer_main_parts_equal_whole(tmp_path: Path, sample: set[str]) -> None:
    src = tmp_path / "sample.fa"
    src.write_text(kmer_match.demo_sample(SEED, [3, 17, 41], REF_LENGTH, fragment=80))
    assert kmer_match.main(_kmer_args(tmp_path, src, 0, N_REFS, "whole.out")) == 0
    parts = []
    for s in Plan.by_count(0, N_REFS, 4).slices():
        name = f"part{s.index}.out"
        assert kmer_match.main(_kmer_args(tmp_path, src, s.start, s.end, name)) == 0
        parts.append((tmp_path / name).read_text())
    whole = (tmp_path / "whole.out").read_text()
    assert whole == "".join(run_match(sample, 0, N_REFS))
    assert "".join(parts) == whole


@pytest.mark.parametrize("content", ["", "NNNNNNNNNNNNNNNN\n", ">h\nACG\n", "ACGTNACG\n"])
def test_kmer_main_without_kmers_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    src = tmp_path / "empty.fa"
    src.write_text(content)
    assert kmer_match.main(_kmer_args(tmp_path, src, 0, 5, "out")) == 2
    assert "no k-mers of length 8" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_kmer_main_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kmer_match.main(_kmer_args(tmp_path, tmp_path / "nope.fa", 0, 5, "out")) == 2
    assert "not found" in capsys.readouterr().err


# ---- seq-stats -----------------------------------------------------------------------------

LINES = [
    b"ACGT\n",
    b"gggccc\n",
    b"\n",
    b"ATATATAT\r\n",
    b"  NNNN  \n",
    b"GATTACA\n",
    b"\n",
    b"C\n",
    b"acgtacgtacgt",
]


def test_stats_line_format() -> None:
    assert list(seq_stats.stats([b"GGCC\n", b"\n", b"ATGC\n"], 10)) == [
        "10\t4\t1.0000\t" + hashlib.sha256(b"GGCC").hexdigest()[:16] + "\n",
        "12\t4\t0.5000\t" + hashlib.sha256(b"ATGC").hexdigest()[:16] + "\n",
    ]


def test_stats_is_case_and_whitespace_insensitive() -> None:
    [a] = seq_stats.stats([b"acgt\n"], 0)
    [b] = seq_stats.stats([b"  ACGT \r\n"], 0)
    assert a == b


def test_stats_skips_blank_lines_but_keeps_numbering() -> None:
    numbers = [int(line.split("\t")[0]) for line in seq_stats.stats(LINES, 0)]
    assert numbers == [0, 1, 3, 4, 5, 7, 8]


@pytest.mark.parametrize("per", [1, 2, 3, 4, 5, len(LINES), 100])
def test_stats_over_line_slices_equals_whole(per: int) -> None:
    whole = list(seq_stats.stats(LINES, 0))
    parts = [
        line
        for s in Plan.by_lines(len(LINES), per).slices()
        for line in seq_stats.stats(LINES[s.start : s.end], s.start)
    ]
    assert parts == whole


def test_seq_stats_main_parts_equal_whole(tmp_path: Path) -> None:
    whole_in = tmp_path / "whole.txt"
    whole_in.write_bytes(b"".join(LINES))
    args = ["--input", str(whole_in), "--output", str(tmp_path / "whole.out")]
    assert seq_stats.main([*args, "--start", "0", "--end", str(len(LINES))]) == 0
    merged = ""
    for s in Plan.by_lines(len(LINES), 4).slices():
        part_in = tmp_path / f"in{s.index}"
        part_in.write_bytes(b"".join(LINES[s.start : s.end]))
        out = tmp_path / f"out{s.index}"
        argv = ["--input", str(part_in), "--output", str(out)]
        assert seq_stats.main([*argv, "--start", str(s.start), "--end", str(s.end)]) == 0
        merged += out.read_text()
    assert merged == (tmp_path / "whole.out").read_text()
    assert merged.count("\n") == 7


def test_seq_stats_main_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]
    assert seq_stats.main([*argv, "--start", "0", "--end", "1"]) == 2
    assert "not found" in capsys.readouterr().err
