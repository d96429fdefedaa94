from __future__ import annotations

import pytest

from chalicelib.config import parse_mission_config
from chalicelib.scheduler import looks_binary, needs_text_input
from chalicelib.settings import Settings


@pytest.mark.parametrize(
    ("start", "binary"),
    [
        (b">read1\nACGT\n", False),
        ("ünïcode\n".encode(), False),
        ("ACGT é".encode()[:-1], False),  # a character cut at the end of the sample
        (b"ACGT\x00ACGT", True),
        (b"\xff\xfe\xfa plain", True),
        (b"", False),
    ],
)
def test_looks_binary(start: bytes, binary: bool):
    assert looks_binary(start) is binary


def _config(split: dict, app: dict):
    body = {"name": "n", "input": "k", "split": split, "app": app}
    import json

    return parse_mission_config(json.dumps(body), Settings.from_env({}))


COUNT = {"mode": "count", "count": 2, "interval": {"start": 0, "end": 4}}
LINES = {"mode": "lines", "lines_per_transaction": 2}


def test_text_is_needed_for_lines_and_builtins_only():
    assert needs_text_input(_config(COUNT, {"builtin": "kmer-match"}))
    assert needs_text_input(_config(LINES, {"argv": ["tool", "{input}"]}))
    assert not needs_text_input(_config(COUNT, {"argv": ["tool", "{input}"]}))
