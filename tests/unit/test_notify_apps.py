"""notify (the completion email) and apps (placeholders and argv templates)."""

from __future__ import annotations

import dataclasses

import pytest

from chalicelib.apps import (
    BUILTIN_APPS,
    PLACEHOLDERS,
    builtin_argv,
    placeholders_in,
    render_argv,
)
from chalicelib.notify import (
    MAX_FAILURES_LISTED,
    FailedTransaction,
    MissionReport,
    email_body,
    email_subject,
)


def report(**changes: object) -> MissionReport:
    base = MissionReport(
        mission_id="m-1",
        name="demo",
        status="SUCCEEDED",
        total=10,
        succeeded=10,
        failed=0,
        duration_seconds=12.34,
        instance_seconds=56.78,
        estimated_cost=0.0123,
        instances=3,
        result_uri="s3://bucket/results/m-1/result.out",
        error=None,
        failures=[],
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def failure(index: int, exit_code: int | None = 1, error: str | None = "boom") -> FailedTransaction:
    start = index * 10
    return FailedTransaction(index, start, start + 10, 3, exit_code, error)


# ---- subject -------------------------------------------------------------------------------


def test_subject_plain() -> None:
    assert email_subject(report()) == "lighthpc: demo SUCCEEDED"


@pytest.mark.parametrize("status", ["SUCCEEDED", "FAILED", "AWAITING_INPUT"])
@pytest.mark.parametrize(
    "name",
    [
        "é" * 128,
        "😀" * 128,
        "x" * 128,
        "名前" * 64,
        "a\u2028b" * 40,
        "short é",
        "x" * 79,
        "x" * 80,
    ],
)
def test_subject_is_short_ascii_and_names_the_status(name: str, status: str) -> None:
    subject = email_subject(report(name=name, status=status))
    assert subject.isascii()
    assert len(subject) < 100
    assert subject.endswith(f" {status}")
    assert subject.startswith("lighthpc: ")
    assert "\n" not in subject and "\r" not in subject


def test_long_subject_is_truncated_with_an_ellipsis() -> None:
    subject = email_subject(report(name="y" * 128, status="FAILED"))
    assert "..." in subject
    assert subject.startswith("lighthpc: yyy")


def test_unicode_name_is_replaced_not_dropped() -> None:
    assert email_subject(report(name="café")) == "lighthpc: caf? SUCCEEDED"


# ---- body ----------------------------------------------------------------------------------


def test_body_of_a_success() -> None:
    body = email_body(report())
    assert body.endswith("\n")
    assert "Mission 'demo' (m-1) finished: SUCCEEDED." in body
    assert "10 in all, 10 succeeded, 0 failed" in body
    assert "12.3 s" in body
    assert "Instances:        3" in body
    assert "Instance-seconds: 56.8" in body
    assert "s3://bucket/results/m-1/result.out" in body
    assert "Failed transactions" not in body
    assert "The mission failed" not in body


def test_body_names_who_submitted_it_when_known() -> None:
    assert "Submitted by" not in email_body(report())
    caller = "arn:aws:sts::123456789012:assumed-role/Researcher/ana"
    assert f"Submitted by:     {caller}" in email_body(report(submitted_by=caller))


def test_body_without_duration_or_result() -> None:
    body = email_body(report(duration_seconds=None, result_uri=None))
    assert "Duration:         -" in body
    assert "Result:           (none)" in body


def test_body_lists_failures() -> None:
    failures = [
        failure(2, exit_code=1, error="  Traceback: boom\n"),
        failure(5, exit_code=-9, error="killed after the transaction timeout of 60 s"),
        failure(7, exit_code=None, error=None),
    ]
    body = email_body(
        report(status="FAILED", succeeded=7, failed=3, failures=failures, result_uri=None)
    )
    assert "10 in all, 7 succeeded, 3 failed" in body
    assert "Failed transactions:" in body
    assert "  #2 [20, 30) after 3 attempt(s), exit code 1: Traceback: boom" in body
    assert "  #5 [50, 60) after 3 attempt(s), exit code -9: killed after the transaction" in body
    assert "  #7 [70, 80) after 3 attempt(s), exit code -: (no message)" in body
    assert "more" not in body


def test_body_caps_the_failure_list() -> None:
    n = MAX_FAILURES_LISTED + 7
    failures = [failure(i, error=f"err{i}") for i in range(n)]
    body = email_body(report(status="FAILED", total=n, succeeded=0, failed=n, failures=failures))
    listed = [line for line in body.splitlines() if line.startswith("  #")]
    assert len(listed) == MAX_FAILURES_LISTED
    assert listed[0].startswith("  #0 ")
    assert listed[-1].startswith(f"  #{MAX_FAILURES_LISTED - 1} ")
    assert f"#{MAX_FAILURES_LISTED} " not in body
    assert "  ... and 7 more" in body


def test_body_lists_exactly_the_maximum_without_more() -> None:
    failures = [failure(i) for i in range(MAX_FAILURES_LISTED)]
    body = email_body(report(status="FAILED", failures=failures))
    assert "more" not in body


def test_body_shows_the_mission_level_error() -> None:
    body = email_body(
        report(status="FAILED", total=0, succeeded=0, failed=0, error="input has no lines")
    )
    assert "The mission failed: input has no lines" in body
    assert "0 in all, 0 succeeded, 0 failed" in body


# ---- apps ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "names"),
    [
        ("plain", []),
        ("{input}", ["input"]),
        ("--range={start}:{end}", ["start", "end"]),
        ("{input}{input}", ["input", "input"]),
        ("{{literal}}", []),
        ("{{{index}}}", ["index"]),
        ("{}", [""]),
        ("{nope}", ["nope"]),
    ],
)
def test_placeholders_in(template: str, names: list[str]) -> None:
    assert placeholders_in(template) == names


@pytest.mark.parametrize("template", ["{", "}", "x{y", "a}b", "{input"])
def test_placeholders_in_rejects_malformed(template: str) -> None:
    with pytest.raises(ValueError):
        placeholders_in(template)


def test_placeholder_set() -> None:
    expected = ["attempt", "count", "end", "index", "input", "output", "python", "start"]
    assert sorted(PLACEHOLDERS) == expected


def test_builtin_apps() -> None:
    assert BUILTIN_APPS["kmer-match"].split_mode == "count"
    assert BUILTIN_APPS["seq-stats"].split_mode == "lines"
    assert all(name == app.name for name, app in BUILTIN_APPS.items())


def test_builtin_argv_kmer_match() -> None:
    argv = builtin_argv(BUILTIN_APPS["kmer-match"], {"seed": 3, "k": 8, "ref_length": 64})
    assert argv == [
        "{python}", "-m", "worker_ami.apps.kmer_match",
        "--input", "{input}", "--output", "{output}", "--start", "{start}", "--end", "{end}",
        "--k", "8", "--ref-length", "64", "--seed", "3",
    ]  # fmt: skip


def test_builtin_argv_seq_stats_without_params() -> None:
    argv = builtin_argv(BUILTIN_APPS["seq-stats"], {})
    assert argv[:3] == ["{python}", "-m", "worker_ami.apps.seq_stats"]
    assert len(argv) == 11


def test_builtin_argv_uses_only_known_placeholders() -> None:
    for app in BUILTIN_APPS.values():
        for element in builtin_argv(app, {"k": 4}):
            assert set(placeholders_in(element)) <= PLACEHOLDERS


VALUES: dict[str, object] = {
    "python": "/usr/bin/python3",
    "input": "/tmp/in put; rm -rf / #.txt",
    "output": "/tmp/$(whoami)/out `id`.txt",
    "index": 3,
    "count": 10,
    "start": -5,
    "end": 7,
    "attempt": 2,
}


def test_render_argv_keeps_each_value_one_element() -> None:
    template = ["{python}", "-c", "x", "{input}", "--out={output}", "{start}:{end}", "{attempt}"]
    assert render_argv(template, VALUES) == [
        "/usr/bin/python3",
        "-c",
        "x",
        "/tmp/in put; rm -rf / #.txt",
        "--out=/tmp/$(whoami)/out `id`.txt",
        "-5:7",
        "2",
    ]


def test_render_argv_leaves_shell_syntax_alone() -> None:
    template = ["echo", "a b", "&&", "{index}/{count}", "'{input}'", "{{x}}", "*"]
    rendered = render_argv(template, VALUES)
    assert len(rendered) == len(template)
    assert rendered == ["echo", "a b", "&&", "3/10", "'/tmp/in put; rm -rf / #.txt'", "{x}", "*"]


def test_render_argv_of_builtin() -> None:
    argv = render_argv(builtin_argv(BUILTIN_APPS["kmer-match"], {"k": 8}), VALUES)
    assert argv == [
        "/usr/bin/python3", "-m", "worker_ami.apps.kmer_match",
        "--input", VALUES["input"], "--output", VALUES["output"],
        "--start", "-5", "--end", "7", "--k", "8",
    ]  # fmt: skip


def test_render_argv_unknown_placeholder_raises() -> None:
    with pytest.raises(KeyError):
        render_argv(["{nope}"], VALUES)


@pytest.mark.parametrize("template", ["{input!r}", "{index:08d}", "{input:{nope}}"])
def test_placeholders_must_be_plain(template: str) -> None:
    with pytest.raises(ValueError, match="plain"):
        placeholders_in(template)
