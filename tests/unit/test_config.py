"""parse_mission_config: good configs, bad configs (with the exact field each reports), policy."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from chalicelib.apps import PLACEHOLDERS
from chalicelib.config import (
    MAX_BODY_BYTES,
    ArgvApp,
    ConfigInvalid,
    CountSplit,
    FieldError,
    KmerMatchApp,
    LinesSplit,
    MissionConfig,
    SeqStatsApp,
    parse_mission_config,
    slots_per_instance,
)
from chalicelib.settings import Settings

LOCAL = Settings.from_env({})
PROD = Settings.from_env({"LIGHTHPC_STAGE": "prod", "ALLOWED_PROGRAMS": "/opt/tools/blast"})
SMALL = Settings.from_env({"MAX_INSTANCES": "8", "MAX_TRANSACTIONS": "50"})

KMER: dict[str, Any] = {
    "name": "kmer demo",
    "input": "samples/demo.fa",
    "split": {"mode": "count", "count": 4, "interval": {"start": 0, "end": 100}},
    "app": {"builtin": "kmer-match", "params": {"k": 8, "seed": 3, "ref_length": 64}},
}
SEQ_STATS: dict[str, Any] = {
    "name": "stats",
    "input": "reads/r.txt",
    "split": {"mode": "lines", "lines_per_transaction": 1000},
    "app": {"builtin": "seq-stats"},
}
ALL_PLACEHOLDERS_ARGV = [
    "{python}",
    "-c",
    "pass",
    "{input}",
    "--out={output}",
    "{start}:{end}",
    "attempt-{attempt}",
    "{index}/{count}",
]
ARGV: dict[str, Any] = {
    "name": "argv app",
    "input": "in/data.bin",
    "split": {"mode": "count", "count": 3, "interval": {"start": -10, "end": 20}},
    "app": {"argv": ALL_PLACEHOLDERS_ARGV},
    "instances": {
        "types": ["c5.large", "m5.xlarge", "c6g.2xlarge"],
        "market": "on-demand",
        "on_demand_fallback": True,
        "max_instances": 8,
        "slots": 2,
    },
    "max_attempts": 5,
    "timeouts": {"transaction_seconds": 60, "mission_seconds": 600},
    "notify": "ops@example.org",
}


def body(config: dict[str, Any]) -> str:
    return json.dumps(config)


def with_(base: dict[str, Any], **changes: Any) -> str:
    config = copy.deepcopy(base)
    config.update(changes)
    return body(config)


def without(base: dict[str, Any], key: str) -> str:
    config = copy.deepcopy(base)
    del config[key]
    return body(config)


def errors_of(raw: str | bytes | None, settings: Settings) -> list[FieldError]:
    with pytest.raises(ConfigInvalid) as excinfo:
        parse_mission_config(raw, settings)
    return excinfo.value.errors


# ---- good configs --------------------------------------------------------------------------


def test_kmer_match_with_count_split() -> None:
    config = parse_mission_config(body(KMER), LOCAL)
    assert config.name == "kmer demo"
    assert config.input == "samples/demo.fa"
    assert isinstance(config.split, CountSplit)
    assert (config.split.count, config.split.interval.start, config.split.interval.end) == (
        4,
        0,
        100,
    )
    assert isinstance(config.app, KmerMatchApp)
    assert config.app.params.model_dump() == {"k": 8, "seed": 3, "ref_length": 64}
    # Defaults of everything left out.
    assert config.instances.types == ["c5.large"]
    assert config.instances.market == "spot"
    assert config.instances.on_demand_fallback is False
    assert config.instances.max_instances == 4
    assert config.instances.slots is None  # default: the instance's vCPUs
    assert slots_per_instance(config.instances) == 2  # c5.large
    assert config.max_attempts == 3
    assert config.timeouts.transaction_seconds == 3600
    assert config.timeouts.mission_seconds == 86400
    assert config.notify is None


def test_kmer_match_params_default() -> None:
    config = parse_mission_config(with_(KMER, app={"builtin": "kmer-match"}), LOCAL)
    assert isinstance(config.app, KmerMatchApp)
    assert config.app.params.model_dump() == {"k": 12, "seed": 7, "ref_length": 2000}


def test_seq_stats_with_lines_split() -> None:
    config = parse_mission_config(body(SEQ_STATS).encode(), LOCAL)
    assert isinstance(config.split, LinesSplit)
    assert config.split.lines_per_transaction == 1000
    assert isinstance(config.app, SeqStatsApp)


def test_argv_app_with_every_placeholder() -> None:
    config = parse_mission_config(body(ARGV), LOCAL)
    assert isinstance(config.app, ArgvApp)
    assert config.app.argv == ALL_PLACEHOLDERS_ARGV
    assert config.instances.types == ["c5.large", "m5.xlarge", "c6g.2xlarge"]
    assert config.instances.market == "on-demand"
    assert config.instances.slots == 2
    assert config.max_attempts == 5
    assert config.notify == "ops@example.org"
    assert isinstance(config.split, CountSplit)
    assert config.split.interval.start == -10


def test_the_argv_fixture_uses_every_placeholder() -> None:
    used = {name for element in ALL_PLACEHOLDERS_ARGV for name in PLACEHOLDERS if name in element}
    assert used == PLACEHOLDERS


def test_body_exactly_at_the_size_limit_is_accepted() -> None:
    raw = body(KMER)
    padded = raw[:-1] + " " * (MAX_BODY_BYTES - len(raw)) + "}"
    assert len(padded.encode()) == MAX_BODY_BYTES
    assert parse_mission_config(padded, LOCAL).name == "kmer demo"


def test_count_equal_to_interval_length_is_accepted() -> None:
    split = {"mode": "count", "count": 10, "interval": {"start": 5, "end": 15}}
    config = parse_mission_config(with_(KMER, split=split), LOCAL)
    assert isinstance(config.split, CountSplit)
    assert config.split.count == 10


def test_stage_limits_are_inclusive() -> None:
    split = {"mode": "count", "count": 50, "interval": {"start": 0, "end": 100}}
    config = parse_mission_config(with_(KMER, split=split, instances={"max_instances": 8}), SMALL)
    assert config.instances.max_instances == 8


@pytest.mark.parametrize("config", [KMER, SEQ_STATS, ARGV], ids=["kmer", "seq-stats", "argv"])
def test_round_trip_through_json(config: dict[str, Any]) -> None:
    parsed = parse_mission_config(body(config), LOCAL)
    again = MissionConfig.model_validate_json(parsed.model_dump_json())
    assert again == parsed
    assert again.model_dump() == parsed.model_dump()
    assert type(again.app) is type(parsed.app)
    assert type(again.split) is type(parsed.split)
    # And once more through the public entry point.
    assert parse_mission_config(parsed.model_dump_json(), LOCAL) == parsed


def test_config_is_frozen() -> None:
    config = parse_mission_config(body(KMER), LOCAL)
    with pytest.raises(ValueError):
        config.name = "other"  # type: ignore[misc]


# ---- stage policy --------------------------------------------------------------------------


def test_prod_settings_restrict_argv() -> None:
    assert LOCAL.allow_inline_argv is True
    assert PROD.allow_inline_argv is False
    assert PROD.allowed_programs == ("/opt/tools/blast",)


def test_prod_accepts_an_allowed_program() -> None:
    argv = ["/opt/tools/blast", "-query", "{input}", "-out", "{output}"]
    config = parse_mission_config(with_(ARGV, app={"argv": argv}), PROD)
    assert isinstance(config.app, ArgvApp)
    assert config.app.argv == argv


@pytest.mark.parametrize("config", [KMER, SEQ_STATS], ids=["kmer", "seq-stats"])
def test_prod_accepts_builtins(config: dict[str, Any]) -> None:
    assert parse_mission_config(body(config), PROD) == parse_mission_config(body(config), LOCAL)


@pytest.mark.parametrize(
    "program", ["{python}", "/usr/bin/python3", "/opt/tools/blast2", "blast", "/opt/tools/blast "]
)
def test_prod_rejects_other_programs(program: str) -> None:
    errors = errors_of(with_(ARGV, app={"argv": [program, "{input}"]}), PROD)
    assert [e.field for e in errors] == ["app.argv"]
    assert "allow list" in errors[0].reason


def test_allow_inline_argv_flag_overrides_stage_default() -> None:
    staging = Settings.from_env({"LIGHTHPC_STAGE": "staging", "ALLOW_INLINE_ARGV": "yes"})
    assert (
        parse_mission_config(body(ARGV), staging).app == parse_mission_config(body(ARGV), LOCAL).app
    )


# ---- bad configs ---------------------------------------------------------------------------


def _split(count: Any, start: Any = 0, end: Any = 10) -> dict[str, Any]:
    return {"mode": "count", "count": count, "interval": {"start": start, "end": end}}


# fmt: off
BAD: list[tuple[str, str | bytes | None, Settings, str]] = [
    # -- the body itself
    ("none", None, LOCAL, "(body)"),
    ("empty", b"", LOCAL, "(body)"),
    ("whitespace", "  \n\t ", LOCAL, "(body)"),
    ("not-json", b"{name: x}", LOCAL, "(body)"),
    ("truncated-json", body(KMER)[:-1], LOCAL, "(body)"),
    ("not-utf8", b"\xff\xfe\xfa", LOCAL, "(body)"),
    ("json-list", b"[1, 2]", LOCAL, "(body)"),
    ("json-string", b'"config"', LOCAL, "(body)"),
    ("json-null", b"null", LOCAL, "(body)"),
    ("too-large", with_(KMER, name="x" * MAX_BODY_BYTES), LOCAL, "(body)"),
    # -- top level
    ("unknown-field", with_(KMER, zzz=1), LOCAL, "zzz"),
    ("missing-name", without(KMER, "name"), LOCAL, "name"),
    ("missing-app", without(KMER, "app"), LOCAL, "app"),
    ("missing-split", without(KMER, "split"), LOCAL, "split"),
    ("name-empty", with_(KMER, name=""), LOCAL, "name"),
    ("name-blank", with_(KMER, name="   "), LOCAL, "name"),
    ("name-newline", with_(KMER, name="a\nb"), LOCAL, "name"),
    ("name-too-long", with_(KMER, name="n" * 129), LOCAL, "name"),
    ("name-not-string", with_(KMER, name=5), LOCAL, "name"),
    ("input-absolute", with_(KMER, input="/samples/demo.fa"), LOCAL, "input"),
    ("input-nul", with_(KMER, input="a\x00b"), LOCAL, "input"),
    ("input-tab", with_(KMER, input="a\tb.fa"), LOCAL, "input"),
    ("input-del", with_(KMER, input="a\x7fb.fa"), LOCAL, "input"),
    ("input-empty", with_(KMER, input=""), LOCAL, "input"),
    ("input-too-many-bytes", with_(KMER, input="é" * 600), LOCAL, "input"),
    ("max-attempts-zero", with_(KMER, max_attempts=0), LOCAL, "max_attempts"),
    ("max-attempts-eleven", with_(KMER, max_attempts=11), LOCAL, "max_attempts"),
    ("max-attempts-fraction", with_(KMER, max_attempts=2.5), LOCAL, "max_attempts"),
    ("notify-no-at", with_(KMER, notify="nobody"), LOCAL, "notify"),
    ("notify-no-dot", with_(KMER, notify="a@b"), LOCAL, "notify"),
    ("notify-space", with_(KMER, notify="a b@c.org"), LOCAL, "notify"),
    ("notify-number", with_(KMER, notify=5), LOCAL, "notify"),
    # -- split
    ("count-zero", with_(KMER, split=_split(0)), LOCAL, "split.count"),
    ("count-not-int", with_(KMER, split=_split("x")), LOCAL, "split.count"),
    ("count-over-stage-limit", with_(KMER, split=_split(51, 0, 100)), SMALL, "split.count"),
    ("count-over-default-limit", with_(KMER, split=_split(100_001, 0, 10**6)), LOCAL,
     "split.count"),
    ("count-over-interval", with_(KMER, split=_split(11, 0, 10)), LOCAL, "split.count"),
    ("interval-empty", with_(KMER, split=_split(2, 10, 10)), LOCAL, "split.interval"),
    ("interval-reversed", with_(KMER, split=_split(1, 10, 0)), LOCAL, "split.interval"),
    ("interval-no-end", with_(KMER, split={**_split(2), "interval": {"start": 0}}), LOCAL,
     "split.interval.end"),
    ("split-extra", with_(KMER, split={**_split(2), "extra": 1}), LOCAL, "split.extra"),
    ("split-mode-unknown", with_(KMER, split={"mode": "bogus"}), LOCAL, "split"),
    ("split-mode-missing", with_(KMER, split={"count": 3}), LOCAL, "split"),
    ("lines-zero", with_(SEQ_STATS, split={"mode": "lines", "lines_per_transaction": 0}), LOCAL,
     "split.lines_per_transaction"),
    ("lines-huge", with_(SEQ_STATS, split={"mode": "lines", "lines_per_transaction": 10**8 + 1}),
     LOCAL, "split.lines_per_transaction"),
    # -- app
    ("builtin-unknown", with_(KMER, app={"builtin": "nope"}), LOCAL, "app"),
    ("builtin-null", with_(KMER, app={"builtin": None}), LOCAL, "app"),
    ("app-empty", with_(KMER, app={}), LOCAL, "app"),
    ("app-list", with_(KMER, app=["python"]), LOCAL, "app"),
    ("kmer-needs-count", with_(KMER, split={"mode": "lines", "lines_per_transaction": 5}), LOCAL,
     "app"),
    ("seq-stats-needs-lines", with_(SEQ_STATS, split=_split(2)), LOCAL, "app"),
    ("kmer-k-small", with_(KMER, app={"builtin": "kmer-match", "params": {"k": 3}}), LOCAL,
     "app.params.k"),
    ("kmer-k-large", with_(KMER, app={"builtin": "kmer-match", "params": {"k": 32}}), LOCAL,
     "app.params.k"),
    ("kmer-seed-negative", with_(KMER, app={"builtin": "kmer-match", "params": {"seed": -1}}),
     LOCAL, "app.params.seed"),
    ("kmer-ref-length", with_(KMER, app={"builtin": "kmer-match", "params": {"ref_length": 31}}),
     LOCAL, "app.params.ref_length"),
    ("kmer-unknown-param", with_(KMER, app={"builtin": "kmer-match", "params": {"q": 1}}), LOCAL,
     "app.params.q"),
    ("seq-stats-param", with_(SEQ_STATS, app={"builtin": "seq-stats", "params": {"k": 1}}), LOCAL,
     "app.params.k"),
    ("argv-unknown-placeholder", with_(KMER, app={"argv": ["{python}", "{nope}"]}), LOCAL,
     "app.argv"),
    ("argv-positional-placeholder", with_(KMER, app={"argv": ["run", "{}"]}), LOCAL, "app.argv"),
    ("argv-attribute-placeholder", with_(KMER, app={"argv": ["run", "{input.__class__}"]}),
     LOCAL, "app.argv"),
    ("argv-malformed-placeholder", with_(KMER, app={"argv": ["run", "x{"]}), LOCAL, "app.argv"),
    ("argv-control-char", with_(KMER, app={"argv": ["run", "a\tb"]}), LOCAL, "app.argv"),
    ("argv-empty-list", with_(KMER, app={"argv": []}), LOCAL, "app.argv"),
    ("argv-string", with_(KMER, app={"argv": "python x.py"}), LOCAL, "app.argv"),
    ("argv-empty-element", with_(KMER, app={"argv": ["run", ""]}), LOCAL, "app.argv.1"),
    ("argv-too-long", with_(KMER, app={"argv": ["run"] * 257}), LOCAL, "app.argv"),
    ("argv-not-allowed-in-prod", with_(KMER, app={"argv": ["/usr/bin/env", "{input}"]}), PROD,
     "app.argv"),
    # -- instances
    ("type-uppercase", with_(KMER, instances={"types": ["C5.large"]}), LOCAL, "instances.types.0"),
    ("type-second-bad", with_(KMER, instances={"types": ["c5.large", "bad type"]}), LOCAL,
     "instances.types.1"),
    ("types-empty", with_(KMER, instances={"types": []}), LOCAL, "instances.types"),
    ("types-repeat", with_(KMER, instances={"types": ["c5.large", "c5.large"]}), LOCAL,
     "instances.types"),
    ("market-unknown", with_(KMER, instances={"market": "reserved"}), LOCAL, "instances.market"),
    ("max-instances-zero", with_(KMER, instances={"max_instances": 0}), LOCAL,
     "instances.max_instances"),
    ("max-instances-over-stage", with_(KMER, instances={"max_instances": 9}), SMALL,
     "instances.max_instances"),
    ("max-instances-over-default", with_(KMER, instances={"max_instances": 1001}), LOCAL,
     "instances.max_instances"),
    ("slots-zero", with_(KMER, instances={"slots": 0}), LOCAL, "instances.slots"),
    ("slots-over", with_(KMER, instances={"slots": 257}), LOCAL, "instances.slots"),
    ("instances-extra", with_(KMER, instances={"spot": True}), LOCAL, "instances.spot"),
    # -- timeouts
    ("transaction-timeout-zero", with_(KMER, timeouts={"transaction_seconds": 0}), LOCAL,
     "timeouts.transaction_seconds"),
    ("transaction-timeout-8-days", with_(KMER, timeouts={"transaction_seconds": 8 * 86400}),
     LOCAL, "timeouts.transaction_seconds"),
    ("mission-timeout-short", with_(KMER, timeouts={"mission_seconds": 59}), LOCAL,
     "timeouts.mission_seconds"),
    ("timeouts-extra", with_(KMER, timeouts={"x": 1}), LOCAL, "timeouts.x"),
]
# fmt: on


@pytest.mark.parametrize(
    ("raw", "settings", "field"),
    [pytest.param(raw, settings, field, id=case_id) for case_id, raw, settings, field in BAD],
)
def test_bad_config_names_the_field(
    raw: str | bytes | None, settings: Settings, field: str
) -> None:
    errors = errors_of(raw, settings)
    assert [e.field for e in errors] == [field]
    assert errors[0].reason.strip()
    assert not errors[0].reason.startswith("Value error")


def test_bad_case_ids_are_distinct() -> None:
    ids = [case[0] for case in BAD]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 20


def test_every_problem_is_reported_at_once() -> None:
    raw = body(
        {
            "name": "",
            "input": "/x",
            "split": _split(0, 0, 1),
            "app": {"builtin": "nope"},
            "zzz": 1,
        }
    )
    errors = errors_of(raw, LOCAL)
    assert [e.field for e in errors] == ["name", "input", "split.count", "app", "zzz"]
    assert all(e.reason for e in errors)


def test_config_invalid_message_joins_the_errors() -> None:
    with pytest.raises(ConfigInvalid) as excinfo:
        parse_mission_config(with_(KMER, max_attempts=0, notify="x"), LOCAL)
    message = str(excinfo.value)
    assert "max_attempts: " in message
    assert "notify: must be an email address" in message
    assert isinstance(excinfo.value, ValueError)


@pytest.mark.parametrize(
    ("raw", "snippet"),
    [
        (with_(KMER, split=_split(51, 0, 100)), "at most 50 transactions"),
        (with_(KMER, instances={"max_instances": 9}), "at most 8 instances"),
        (with_(KMER, split=_split(11, 0, 10)), "interval's length"),
        (with_(KMER, split=_split(1, 3, 3)), "end must be greater than start"),
        (with_(KMER, input="/abs"), "must not start with '/'"),
        (with_(KMER, name="a\tb"), "must not contain control characters"),
        (with_(KMER, name="  "), "must not be blank"),
        (with_(SEQ_STATS, split=_split(2)), "needs split mode 'lines'"),
        (with_(KMER, app={"argv": ["x", "{nope}"]}), "unknown placeholder {nope}"),
        (with_(KMER, app={"builtin": "nope"}), "fasta-stats, kmer-match, kmer-top, seq-stats"),
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b"", "empty"),
    ],
)
def test_reasons_say_what_is_wrong(raw: str | bytes, snippet: str) -> None:
    errors = errors_of(raw, SMALL)
    assert snippet in errors[0].reason


# ---- stage limits on defaults, strict types, plain placeholders ---------------------------


def test_default_max_instances_respects_stage_limit() -> None:
    tiny = Settings.from_env({"MAX_INSTANCES": "2"})
    errors = errors_of(body(KMER), tiny)
    assert [e.field for e in errors] == ["instances.max_instances"]


def test_boolean_is_not_an_integer() -> None:
    errors = errors_of(with_(KMER, max_attempts=True), LOCAL)
    assert [e.field for e in errors] == ["max_attempts"]


def test_placeholder_inside_format_spec_is_checked() -> None:
    errors = errors_of(with_(KMER, app={"argv": ["run", "{input:{nope}}"]}), LOCAL)
    assert [e.field for e in errors] == ["app.argv"]


def test_string_is_not_an_integer() -> None:
    errors = errors_of(with_(KMER, max_attempts="3"), LOCAL)
    assert [e.field for e in errors] == ["max_attempts"]


@pytest.mark.parametrize("element", ["{input:d}", "{input!r}", "{index:08d}"])
def test_placeholders_take_no_spec_or_conversion(element: str) -> None:
    errors = errors_of(with_(KMER, app={"argv": ["run", element]}), LOCAL)
    assert [e.field for e in errors] == ["app.argv"]
    assert "plain" in errors[0].reason
