"""The parsing behind issue 12's 500s, without AWS: query integers, the app discriminator, and
how deep a body may nest."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chalicelib.config import (
    MAX_NESTING,
    QUERY_INT_MAX,
    ConfigInvalid,
    RequestInvalid,
    parse_mission_config,
    parse_query_int,
)
from tests.unit.test_config import KMER, LOCAL


@pytest.mark.parametrize(
    ("text", "minimum", "value"),
    [
        (None, -1, 7),  # absent: the default
        ("-1", -1, -1),
        ("0", -1, 0),
        ("1", 1, 1),
        ("0012", 1, 12),
        (str(QUERY_INT_MAX), 1, QUERY_INT_MAX),
    ],
)
def test_query_integers_in_range(text: str | None, minimum: int, value: int):
    assert parse_query_int("after", text, 7, minimum) == value


@pytest.mark.parametrize(
    ("text", "minimum"),
    [
        ("-2", -1),
        ("0", 1),
        (str(QUERY_INT_MAX + 1), 1),
        ("1" * 5000, 1),  # beyond what int() converts: a 400, not a ValueError
        ("", 1),
        (" 3", 1),
        ("+3", 1),
        ("1_0", 1),
        ("\u0663", 1),  # ARABIC-INDIC DIGIT THREE
        ("3\n", 1),
        ("1.0", 1),
        ("0x1", 1),
    ],
)
def test_query_integers_out_of_range_or_not_decimal(text: str, minimum: int):
    with pytest.raises(RequestInvalid) as caught:
        parse_query_int("limit", text, 1000, minimum)
    assert caught.value.STATUS_CODE == 400
    assert caught.value.body()["fields"][0]["field"] == "limit"
    assert str(minimum) in caught.value.body()["fields"][0]["reason"]


def _fields(config: Any) -> list[str]:
    raw = config if isinstance(config, str) else json.dumps(config)
    with pytest.raises(ConfigInvalid) as caught:
        parse_mission_config(raw, LOCAL)
    return [e.field for e in caught.value.errors]


@pytest.mark.parametrize("builtin", [["kmer-match"], {"a": 1}, 5, 1.5, True, None, [], {}])
def test_a_builtin_that_is_not_a_string_names_the_app(builtin: Any):
    assert _fields({**KMER, "app": {"builtin": builtin}}) == ["app"]


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_up_to_the_limit_is_the_schema_s_to_judge():
    # The body, `app` and `params` are 3 levels; `extra`'s lists make it MAX_NESTING in all.
    config = {**KMER, "app": {**KMER["app"], "params": {"extra": _nested(MAX_NESTING - 3)}}}
    assert _fields(config) == ["app.params.extra"]


@pytest.mark.parametrize("depth", [MAX_NESTING - 2, 500, 5_000])
def test_deeper_nesting_is_the_body_s_fault(depth: int):
    config = {**KMER, "app": {**KMER["app"], "params": {"extra": _nested(depth)}}}
    raw = json.dumps(config) if depth < 900 else '{"a":' * depth + "1" + "}" * depth
    assert _fields(raw) == ["(body)"]
