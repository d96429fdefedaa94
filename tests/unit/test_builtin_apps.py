"""The built-in apps: deterministic references, and parts that concatenate to the whole run."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from chalicelib.planning import Plan
from worker_ami.apps import kmer_match, kmer_top, seq_stats

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


# ---- kmer-top ------------------------------------------------------------------------------

HITS = [
    "ref_00000000\t3\t100\t0.030000\n",
    "ref_00000001\t50\t100\t0.500000\n",
    "ref_00000002\t0\t100\t0.000000\n",
    "ref_00000003\t9\t10\t0.900000\n",
    "ref_00000004\t45\t50\t0.900000\n",
    "ref_00000005\t45\t50\t0.900000\n",
    "ref_00000006\t1\t1\t1.000000\n",
]


def test_top_ranks_by_fraction_then_shared_then_name() -> None:
    assert kmer_top.top(HITS, 10) == [
        "1\tref_00000006\t1\t1\t1.000000\n",
        "2\tref_00000004\t45\t50\t0.900000\n",  # ties on fraction: more shared k-mers first
        "3\tref_00000005\t45\t50\t0.900000\n",  # ties on both: by name
        "4\tref_00000003\t9\t10\t0.900000\n",
        "5\tref_00000001\t50\t100\t0.500000\n",
        "6\tref_00000000\t3\t100\t0.030000\n",
    ]  # ref_00000002 shares nothing


def test_top_ties_on_name_do_not_depend_on_input_order() -> None:
    assert kmer_top.top(HITS[::-1], 10) == kmer_top.top(HITS, 10)
    assert kmer_top.top(["b\t2\t4\t0.5\n", "a\t2\t4\t0.500000\n"], 1) == ["1\ta\t2\t4\t0.500000\n"]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_top_n_is_a_prefix_of_the_whole_ranking(n: int) -> None:
    assert kmer_top.top(HITS, n) == kmer_top.top(HITS, 100)[:n]


def test_top_n_larger_than_the_references() -> None:
    assert len(kmer_top.top(HITS, kmer_top.TOP_MAX)) == 6


@pytest.mark.parametrize(
    "lines", [[], ["r\t0\t10\t0.000000\n"], ["a\t0\t5\t0.0\n", "b\t0\t7\t0.000000"]]
)
def test_top_of_no_hits_is_empty(lines: list[str]) -> None:
    assert kmer_top.top(lines, 10) == []


def test_top_accepts_a_last_line_without_newline_and_crlf() -> None:
    assert kmer_top.top(["a\t1\t2\t0.500000\r\n", "b\t1\t1\t1.000000"], 5) == [
        "1\tb\t1\t1\t1.000000\n",
        "2\ta\t1\t2\t0.500000\n",
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "ref_1\t3\t100\n",  # a field short
        "ref_1\t3\t100\t0.03\textra\n",
        "ref_1 3 100 0.03\n",
        "\n",
        "ref_1\tthree\t100\t0.03\n",
        "ref_1\t-3\t100\t0.03\n",
        "ref_1\t3\t100\tnan\n",
        "ref_1\t3\t100\t1e-2\n",
        "ref_1\t3\t0\t0.03\n",  # no k-mers
        "ref_1\t30\t10\t0.03\n",  # more shared than the reference has
        "ref_1\t3\t10\t3.000000\n",
        "ref_\u00e9\t3\t100\t0.03\n",
        "\t3\t100\t0.03\n",
        "0\t4\t0.5000\t0123456789abcdef\n",  # seq-stats output
    ],
)
def test_top_rejects_a_malformed_line_by_number(bad: str) -> None:
    with pytest.raises(kmer_top.MalformedLine, match=r"^line 3: ") as caught:
        kmer_top.top([HITS[0], HITS[1], bad, HITS[3]], 10)
    assert caught.value.number == 3


def test_top_refuses_n_below_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        kmer_top.top(HITS, 0)


def test_top_streams_its_input() -> None:
    # A generator consumed once: nothing but the heap of n keeps lines.
    many = (f"ref_{i:08d}\t{i % 97 + 1}\t100\t{(i % 97 + 1) / 100:.6f}\n" for i in range(20_000))
    best = kmer_top.top(many, 3)
    assert [line.split("\t")[1] for line in best] == [
        "ref_00000096",
        "ref_00000193",
        "ref_00000290",
    ]


def _top_args(src: Path, out: Path, *extra: str) -> list[str]:
    return ["--input", str(src), "--output", str(out), "--start", "0", "--end", "1", *extra]


def test_kmer_top_main_writes_the_top(tmp_path: Path) -> None:
    src, out = tmp_path / "merged.out", tmp_path / "top.out"
    src.write_text("".join(HITS))
    assert kmer_top.main(_top_args(src, out, "--top", "2")) == 0
    assert out.read_text() == "".join(kmer_top.top(HITS, 2))
    assert kmer_top.main(_top_args(src, out)) == 0  # the default, 10: all six hits
    assert out.read_text().count("\n") == 6


@pytest.mark.parametrize("content", [b"", b"ref_1\t0\t10\t0.000000\n"])
def test_kmer_top_main_empty_input_writes_empty_output(tmp_path: Path, content: bytes) -> None:
    src, out = tmp_path / "merged.out", tmp_path / "top.out"
    src.write_bytes(content)
    assert kmer_top.main(_top_args(src, out)) == 0
    assert out.read_bytes() == b""


@pytest.mark.parametrize("bad", [b"ref_1\t3\n", b"ref_\xff\t3\t100\t0.030000\n"])
def test_kmer_top_main_malformed_line_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: bytes
) -> None:
    src, out = tmp_path / "merged.out", tmp_path / "top.out"
    src.write_bytes("".join(HITS[:2]).encode() + bad)
    assert kmer_top.main(_top_args(src, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kmer-top: {src}: line 3: ")
    assert err.count("\n") == 1
    assert not out.exists()


def test_kmer_top_main_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kmer_top.main(_top_args(tmp_path / "nope", tmp_path / "out")) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("n", ["0", "100001", "x"])
def test_kmer_top_main_refuses_top_out_of_range(tmp_path: Path, n: str) -> None:
    src = tmp_path / "merged.out"
    src.write_text("".join(HITS))
    with pytest.raises(SystemExit) as caught:
        kmer_top.main(_top_args(src, tmp_path / "out", "--top", n))
    assert caught.value.code == 2


def test_kmer_top_cli_over_kmer_match_output_equals_top(tmp_path: Path, sample: set[str]) -> None:
    # The reduce of a mission (kmer-match's parts, merged, then kmer-top as its own process)
    # equals the single-process computation the demo does.
    merged = tmp_path / "merged.out"
    parts = [run_match(sample, s.start, s.end) for s in Plan.by_count(0, N_REFS, 4).slices()]
    merged.write_text("".join(line for part in parts for line in part))
    expected = kmer_top.top(run_match(sample, 0, N_REFS), 5)
    assert len(expected) == 5
    assert {line.split("\t")[1] for line in expected[:3]} == {
        "ref_00000003", "ref_00000017", "ref_00000041"
    }  # fmt: skip
    out = tmp_path / "top.out"
    argv = [sys.executable, "-m", "worker_ami.apps.kmer_top", *_top_args(merged, out, "--top", "5")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert out.read_text() == "".join(expected)


def test_kmer_top_cli_malformed_line_exits_2(tmp_path: Path) -> None:
    src, out = tmp_path / "merged.out", tmp_path / "top.out"
    src.write_text("ref_1\t3\t100\t0.030000\nnot a kmer-match line\n")
    argv = [sys.executable, "-m", "worker_ami.apps.kmer_top", *_top_args(src, out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith(f"kmer-top: {src}: line 2: ")
    assert done.stderr.count("\n") == 1
