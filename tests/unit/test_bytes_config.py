"""The `bytes` split mode in configs: its fields, the alignment an app needs, the stage's limits."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chalicelib.config import BytesSplit, ConfigInvalid, parse_mission_config, split_align
from chalicelib.planning import Plan
from chalicelib.settings import Settings

LOCAL = Settings.from_env({})
SMALL = Settings.from_env({"MAX_TRANSACTIONS": "50"})
CAT = {"argv": ["cp", "{input}", "{output}"]}


def config(split: dict[str, Any], app: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": "chunks", "input": "big.txt", "split": split, "app": app or CAT}


def parse(body: dict[str, Any], settings: Settings = LOCAL):
    return parse_mission_config(json.dumps(body), settings)


def fields(body: dict[str, Any], settings: Settings = LOCAL) -> list[tuple[str, str]]:
    with pytest.raises(ConfigInvalid) as e:
        parse(body, settings)
    return [(f.field, f.reason) for f in e.value.errors]


def test_chunks_or_chunk_bytes():
    by_count = parse(config({"mode": "bytes", "chunks": 1000})).split
    assert isinstance(by_count, BytesSplit) and by_count.chunks == 1000
    by_size = parse(config({"mode": "bytes", "chunk_bytes": 64 << 20, "align": "line"})).split
    assert isinstance(by_size, BytesSplit) and by_size.chunk_bytes == 64 << 20


@pytest.mark.parametrize(
    "split",
    [{"mode": "bytes"}, {"mode": "bytes", "chunks": 3, "chunk_bytes": 10}],
    ids=["neither", "both"],
)
def test_exactly_one_size(split):
    assert fields(config(split)) == [("split", "give exactly one of chunks and chunk_bytes")]


@pytest.mark.parametrize(
    ("split", "field"),
    [
        ({"mode": "bytes", "chunks": 0}, "split.chunks"),
        ({"mode": "bytes", "chunk_bytes": 0}, "split.chunk_bytes"),
        ({"mode": "bytes", "chunks": 3, "align": "word"}, "split.align"),
        ({"mode": "bytes", "chunks": True}, "split.chunks"),
        ({"mode": "bytes", "chunks": 3, "overlap": 9}, "split.overlap"),
    ],
)
def test_bad_fields_are_named(split, field):
    assert field in [f for f, _ in fields(config(split))]


def test_chunks_within_the_stage_limit():
    assert parse(config({"mode": "bytes", "chunks": 50}), SMALL)
    assert fields(config({"mode": "bytes", "chunks": 51}), SMALL) == [
        ("split.chunks", "at most 50 transactions in this stage")
    ]


def test_alignment_defaults_to_the_app_and_may_not_contradict_it():
    fasta = parse(config({"mode": "bytes", "chunks": 4}, {"builtin": "fasta-stats"}))
    assert split_align(fasta) == "fasta"
    assert split_align(parse(config({"mode": "bytes", "chunks": 4}))) == "line"
    explicit = parse(config({"mode": "bytes", "chunks": 4, "align": "fasta"}))
    assert split_align(explicit) == "fasta"  # an argv app may ask for records too
    wrong = config({"mode": "bytes", "chunks": 4, "align": "line"}, {"builtin": "fasta-stats"})
    assert fields(wrong) == [("app", "app 'fasta-stats' needs split.align 'fasta'")]


@pytest.mark.parametrize("builtin", ["kmer-match", "seq-stats"])
def test_other_builtins_do_not_take_byte_chunks(builtin):
    ((field, reason),) = fields(config({"mode": "bytes", "chunks": 4}, {"builtin": builtin}))
    assert field == "app" and "needs split mode" in reason


def test_fasta_stats_needs_bytes_mode():
    body = config({"mode": "lines", "lines_per_transaction": 4}, {"builtin": "fasta-stats"})
    assert fields(body) == [("app", "app 'fasta-stats' needs split mode 'bytes'")]


def test_the_plan_needs_the_input_size():
    split = parse(config({"mode": "bytes", "chunk_bytes": 100})).split
    assert Plan.for_split(split, None, None).count == 0  # not planned yet
    assert Plan.for_split(split, None, 1001).count == 11
