"""The completion email fits one SNS message, in bytes, whatever the failures' stderr holds.

SNS counts 262,144 bytes (not characters) for the message, and the subject and the message
attributes count too. stderr tails can be binary (decoded with errors="replace") or hold control
characters; a mission can fail thousands of transactions.
"""

from __future__ import annotations

import random
import unicodedata
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from chalicelib.config import parse_mission_config
from chalicelib.domain import Mission, Transaction
from chalicelib.notify import (
    MAX_FAILURES_LISTED,
    SAFETY_MARGIN_BYTES,
    FailedTransaction,
    MissionReport,
    PipelineReport,
    email_body,
    email_subject,
    pipeline_body,
    pipeline_subject,
)
from chalicelib.results import build_report
from chalicelib.settings import Settings
from chalicelib.states import MissionStatus, TransactionStatus

SNS_LIMIT = 256 * 1024
FAILURES = 10_000
CONTROL = "".join(chr(c) for c in range(32) if chr(c) not in "\n\t") + "\x7f\x85\x9b\u2028"


def binary_tail(rng: random.Random, size: int = 2000) -> str:
    """A stderr tail as the worker reports it: bytes decoded with errors="replace"."""
    return rng.randbytes(size).decode(errors="replace")


def tails(kind: str, rng: random.Random) -> str:
    if kind == "random bytes":
        return binary_tail(rng) + CONTROL
    if kind == "invalid UTF-8 only":  # every byte a U+FFFD: 3 bytes each
        return bytes(rng.randrange(0x80, 0x100) for _ in range(2000)).decode(errors="replace")
    if kind == "control characters":  # escaping makes each one several characters
        return "".join(rng.choice(CONTROL) for _ in range(2000))
    if kind == "emoji":  # 4 bytes each
        return "\U0001f600" * 2000
    raise AssertionError(kind)


def report(failures: list[FailedTransaction], **changes: object) -> MissionReport:
    values: dict[str, object] = {
        "mission_id": "m-20240101-abcdef",
        "name": "名前" * 64,
        "status": "FAILED",
        "total": len(failures),
        "succeeded": 0,
        "failed": len(failures),
        "duration_seconds": 12.5,
        "instance_seconds": 99.0,
        "estimated_cost": 0.5,
        "instances": 4,
        "result_uri": None,
        "error": None,
        "failures": failures,
        "notify": "owner@" + "x" * 240 + ".org",
        "submitted_by": "arn:aws:sts::123456789012:assumed-role/Researcher/ana",
    }
    values.update(changes)
    return MissionReport(**values)  # type: ignore[arg-type]


def message_bytes(r: MissionReport) -> int:
    """What SNS counts: message, subject, and each attribute's name, type and value."""
    attributes = {"mission_id": r.mission_id, "status": r.status}
    if r.notify:
        attributes["notify"] = r.notify
    envelope = sum(
        len(k.encode()) + len(b"String") + len(v.encode()) for k, v in attributes.items()
    )
    return len(email_body(r).encode()) + len(email_subject(r).encode()) + envelope


def assert_plain_text(body: str) -> None:
    body.encode()  # valid UTF-8: no lone surrogates
    bad = {
        c for c in body if c not in "\n\t" and unicodedata.category(c) in {"Cc", "Cs", "Zl", "Zp"}
    }
    assert not bad, sorted(map(hex, map(ord, bad)))


def failures_of(kind: str, n: int = FAILURES) -> list[FailedTransaction]:
    rng = random.Random(kind)
    pool = [f"Traceback:\n{tails(kind, rng)}" for _ in range(64)]  # 64 distinct tails suffice
    return [FailedTransaction(i, i * 10, i * 10 + 10, 3, 1, pool[i % 64]) for i in range(n)]


@pytest.mark.parametrize(
    "kind", ["random bytes", "invalid UTF-8 only", "control characters", "emoji"]
)
def test_ten_thousand_binary_failures_fit_one_sns_message(kind: str) -> None:
    r = report(failures_of(kind))
    body = email_body(r)
    assert message_bytes(r) < SNS_LIMIT
    assert_plain_text(body)
    listed = [line for line in body.splitlines() if line.startswith("  #")]
    assert 1 <= len(listed) <= MAX_FAILURES_LISTED
    rest = FAILURES - len(listed)
    assert (
        f"  ... and {rest} more; the full list: GET /missions/{r.mission_id}/transactions" in body
    )


def test_control_characters_are_escaped_readably_and_newlines_and_tabs_kept() -> None:
    error = "line one\n\tline two\r\x1b[31mred\x00\x7f\u2028end"
    body = email_body(report([FailedTransaction(3, 30, 40, 2, 1, error)]))
    assert_plain_text(body)
    assert "line one\n" in body
    assert "\tline two" in body
    assert "\\r\\x1b[31mred\\x00\\x7f\\u2028end" in body


def test_lone_surrogates_are_escaped() -> None:
    error = b"bad \xff byte".decode(errors="surrogateescape")
    body = email_body(report([FailedTransaction(0, 0, 1, 1, 1, error)]))
    assert_plain_text(body)
    assert "bad \\udcff byte" in body


def test_each_failure_text_is_capped() -> None:
    body = email_body(report([FailedTransaction(0, 0, 1, 1, 1, "y" * 100_000)]))
    assert len(body.encode()) < 8 * 1024
    assert "more characters cut)" in body


def test_a_huge_mission_error_is_bounded_too() -> None:
    r = report([], error="\x00" + "é" * 200_000)
    assert message_bytes(r) < SNS_LIMIT
    assert_plain_text(email_body(r))


def test_failures_not_in_the_report_are_counted_in_the_summary() -> None:
    listed = failures_of("random bytes", 3)
    body = email_body(report(listed, failed=1003, more_failures=1000))
    assert (
        "  ... and 1000 more; the full list: GET /missions/m-20240101-abcdef/transactions" in body
    )


def test_a_short_failure_list_has_no_summary() -> None:
    body = email_body(report(failures_of("random bytes", 2)))
    assert "more;" not in body


# ---- build_report: the first MAX_FAILURES_LISTED failures kept, the rest counted -------------


CONFIG = parse_mission_config(
    '{"name": "n", "input": "in/x", "split": {"mode": "count", "count": 1,'
    ' "interval": {"start": 0, "end": 100000}}, "app": {"builtin": "kmer-match"}}',
    Settings.from_env({}),
)


def test_build_report_keeps_the_first_failures_and_counts_the_rest() -> None:
    mission_id = "m-many-failures"
    rng = random.Random(3)
    served: list[int] = []

    def of(wanted: str):
        assert wanted == mission_id
        for i in range(FAILURES + 5):
            served.append(i)
            status = TransactionStatus.SUCCEEDED if i % 2001 == 0 else TransactionStatus.FAILED
            yield Transaction(
                mission_id, i, status, i, i + 1, 3, exit_code=1, error=binary_tail(rng)
            )

    now = datetime(2024, 1, 1, tzinfo=UTC)
    mission = Mission(
        mission_id=mission_id,
        name="many",
        status=MissionStatus.FAILED,
        config=CONFIG,
        input_key="in/x",
        created_at=now,
        finished_at=now,
        total=FAILURES + 5,
        succeeded=5,
        failed=FAILURES,
    )
    ctx = SimpleNamespace(
        store=SimpleNamespace(transactions=SimpleNamespace(of=of)),
        settings=SimpleNamespace(result_bucket="results"),
    )
    r = build_report(ctx, mission)  # type: ignore[arg-type]
    assert len(served) == FAILURES + 5  # every transaction seen, once
    assert len(r.failures) == MAX_FAILURES_LISTED
    assert [f.index for f in r.failures] == [i for i in range(60) if i % 2001][:MAX_FAILURES_LISTED]
    assert r.more_failures == FAILURES - MAX_FAILURES_LISTED
    body = email_body(r)
    assert f"  ... and {FAILURES - MAX_FAILURES_LISTED} more;" in body
    assert message_bytes(r) < SNS_LIMIT


@pytest.mark.parametrize("kind", ["emoji", "control characters"])
def test_a_pipeline_of_ten_failing_stages_fits_one_sns_message(kind: str) -> None:
    """The pipeline's one email: 10 stages (the most a pipeline may have), each with 10,000
    failures, a 4 KB-plus error and long locations, stays within SNS's limit, as plain text."""
    huge = tails(kind, random.Random(kind)) * 3
    uri = "s3://bucket/" + "é" * 2000
    stages = [
        (
            f"stage-{i}",
            report(
                failures_of(kind),
                error=huge,
                result_uri=uri,
                manifest_uri=uri,
                concatenation_uri=uri,
            ),
        )
        for i in range(10)
    ]
    pipeline = PipelineReport(
        pipeline_id="p-20240101000000-abcdef12",
        name="名前" * 64,
        status="FAILED",
        stages=stages,
        notify="owner@" + "x" * 240 + ".org",
        submitted_by="arn:aws:sts::123456789012:assumed-role/Researcher/ana",
        budget_usd=5.0,
    )
    body = pipeline_body(pipeline)
    envelope = len(pipeline_subject(pipeline).encode()) + 3 * 300  # three attributes at most
    assert len(body.encode()) + envelope < SNS_LIMIT - SAFETY_MARGIN_BYTES
    assert_plain_text(body)
    assert body.count("Stage 'stage-") == 10
