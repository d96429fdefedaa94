"""Interval bounds fit every store and every app: signed 64-bit, refused in validation otherwise.

DynamoDB numbers hold 38 digits; moto stores more, so a too-large bound used to pass every test
here and fail at claim time on AWS. Apps parse {start}/{end} as integers.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from chalicelib.config import (
    INTERVAL_MAX,
    INTERVAL_MIN,
    ConfigInvalid,
    parse_mission_config,
)
from chalicelib.planning import Plan
from chalicelib.settings import Settings

LOCAL = Settings.from_env({})
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def config(start: Any, end: Any, count: int = 4) -> str:
    return json.dumps(
        {
            "name": "bounds",
            "input": "in/x.fa",
            "split": {"mode": "count", "count": count, "interval": {"start": start, "end": end}},
            "app": {"argv": ["{python}", "-c", "pass", "{start}", "{end}"]},
        }
    )


def fields_of(body: str | bytes) -> list[str]:
    with pytest.raises(ConfigInvalid) as excinfo:
        parse_mission_config(body, LOCAL)
    assert all(e.reason for e in excinfo.value.errors)
    return [e.field for e in excinfo.value.errors]


def test_the_bounds_are_the_signed_64_bit_range() -> None:
    assert (INTERVAL_MIN, INTERVAL_MAX) == (INT64_MIN, INT64_MAX)
    assert len(str(INTERVAL_MIN)) <= 38  # DynamoDB's precision, sign aside


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        (0, 10**38, "split.interval.end"),
        (0, 10**40, "split.interval.end"),
        (-(10**40), 10, "split.interval.start"),
        (0, INT64_MAX + 1, "split.interval.end"),
        (INT64_MIN - 1, 0, "split.interval.start"),
        (-(10**200), 10**200, "split.interval.start"),
    ],
)
def test_bounds_beyond_64_bits_are_refused_naming_the_field(start: int, end: int, field: str):
    assert field in fields_of(config(start, end))


def test_both_bounds_out_of_range_name_both() -> None:
    fields = fields_of(config(-(10**40), 10**40))
    assert {"split.interval.start", "split.interval.end"} <= set(fields)


def test_a_number_too_long_for_python_to_parse_is_a_400_naming_the_field() -> None:
    # Python refuses to convert integers of more than 4300 digits: a ValueError, not a 400.
    body = config(0, 0).replace('"end": 0', '"end": ' + "9" * 5000)
    assert fields_of(body) == ["split.interval.end"]
    body = config(0, 0).replace('"start": 0', '"start": -' + "9" * 5000)
    assert "split.interval.start" in fields_of(body)


def test_a_long_number_elsewhere_names_its_field() -> None:
    data = json.loads(config(0, 10))
    text = json.dumps(data).replace('"count": 4', '"count": ' + "1" * 6000)
    assert fields_of(text) == ["split.count"]
    listed = copy.deepcopy(data) | {"exit_rules": [{"on_exit_code": "1", "action": "fail"}]}
    text = json.dumps(listed).replace('"on_exit_code": "1"', '"on_exit_code": ' + "2" * 6000)
    assert fields_of(text) == ["exit_rules.0.on_exit_code"]


@pytest.mark.parametrize(
    ("start", "end"),
    [(INT64_MIN, INT64_MAX), (INT64_MIN, INT64_MIN + 4), (INT64_MAX - 4, INT64_MAX)],
)
def test_the_extremes_are_accepted_and_every_slice_fits(start: int, end: int) -> None:
    parsed = parse_mission_config(config(start, end), LOCAL)
    interval = parsed.split.interval  # type: ignore[union-attr]
    assert (interval.start, interval.end) == (start, end)
    plan = Plan.by_count(start, end, 4)
    for s in plan.slices():
        assert INT64_MIN <= s.start < s.end <= INT64_MAX
