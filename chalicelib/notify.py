"""The completion email: composed by a pure function, published once to SNS.

SNS takes at most 262,144 bytes (not characters) per message, and the subject and the message
attributes count too. A failure's text is a stderr tail that can be binary or hold control
characters, and a mission can fail thousands of transactions; so every piece of text is escaped
and capped, and the body is built within a byte budget. The full failure list stays in the API.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MAX_FAILURES_LISTED = 50
_SUBJECT_LIMIT = 100  # SNS: ASCII, no line breaks, under 100 characters
SNS_MESSAGE_LIMIT_BYTES = 262_144  # message + subject + attributes, in UTF-8 bytes
# Room for what SNS adds or counts that we do not see (JSON escaping in some protocols, type
# suffixes), so a message near the limit is never refused at completion time.
SAFETY_MARGIN_BYTES = 16 * 1024
MAX_FAILURE_TEXT_BYTES = 2_000  # one failure's message, escaped: 50 of them stay near 100 KB
MAX_ERROR_TEXT_BYTES = 4_000  # the mission's own error
MAX_FIELD_BYTES = 1_000  # any other text taken from outside (name, caller, result location)
_KEEP = frozenset("\n\t")
# Control, format, surrogate, private-use, unassigned and line/paragraph separator characters:
# invisible or line-breaking in a mail reader, or not encodable at all (lone surrogates).
_ESCAPED = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_INDENT = "      "  # continuation lines of a failure's message
_CUT_NOTE_BYTES = 48


@dataclass(frozen=True)
class FailedTransaction:
    index: int
    start: int
    end: int
    attempts: int
    exit_code: int | None
    error: str | None


@dataclass(frozen=True)
class MissionReport:
    mission_id: str
    name: str
    status: str
    total: int
    succeeded: int
    failed: int
    duration_seconds: float | None
    instance_seconds: float
    estimated_cost: float
    instances: int
    result_uri: str | None
    error: str | None
    failures: list[FailedTransaction]
    notify: str | None = None
    submitted_by: str | None = None
    # Failed transactions left out of `failures` (the report keeps only the first few in memory).
    more_failures: int = 0
    # The receipt next to the result (chalicelib.receipt): where it is, and its sha256 (hex), so
    # the email the owner keeps pins it.
    manifest_uri: str | None = None
    manifest_sha256: str | None = None
    # A cancelled mission: its transactions that did not count, who cancelled it, and when.
    cancelled: int = 0
    cancelled_by: str | None = None
    cancelled_at: datetime | None = None
    # A mission with a reduce: its result is the reduce's output; the map's concatenation is
    # kept as well.
    concatenation_uri: str | None = None


@dataclass(frozen=True)
class PipelineReport:
    """A pipeline's one email: how each stage went, in the order they were submitted."""

    pipeline_id: str
    name: str
    status: str
    stages: list[tuple[str, MissionReport]]
    notify: str | None = None
    submitted_by: str | None = None
    budget_usd: float | None = None

    @property
    def estimated_cost(self) -> float:
        return sum(report.estimated_cost for _, report in self.stages)


# 10 stages, each with its error (4 KB), 3 failures (2 KB each) and its fields: under 160 KB,
# within SNS's 256 KiB with the safety margin.
MAX_FAILURES_PER_STAGE = 3


def printable(text: str) -> str:
    """The text with newlines and tabs kept and every other invisible character escaped the way
    Python writes it (\\r, \\x1b, \\u2028): readable in any mail client, and valid UTF-8."""
    return "".join(_escape(c) for c in text)


def clip(text: str, limit: int, newline: str = "\n") -> str:
    """`printable(text)` in at most `limit` bytes of UTF-8, cut between characters (never inside
    an escape) with a note of what was cut; newlines become `newline`."""
    head = text[: limit + 1]  # every character takes a byte at least: no more can fit
    pieces = [newline if c == "\n" else _escape(c) for c in head]
    sizes = [len(p.encode()) for p in pieces]
    if len(head) == len(text) and sum(sizes) <= limit:
        return "".join(pieces)
    room, used, kept = limit - _CUT_NOTE_BYTES, 0, 0
    for size in sizes:
        if used + size > room:
            break
        used += size
        kept += 1
    return "".join(pieces[:kept]) + f" ... ({len(text) - kept} more characters cut)"


def _escape(c: str) -> str:
    if c in _KEEP or unicodedata.category(c) not in _ESCAPED:
        return c
    if c == "\r":
        return "\\r"
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def email_subject(report: MissionReport) -> str:
    return _subject("lighthpc: ", report.name, report.status)


def _subject(prefix: str, name: str, status: str) -> str:
    """ASCII, one line, under SNS's 100 characters: a long name is cut, never the status."""
    name = name.encode("ascii", "replace").decode().replace("\n", " ")
    suffix = f" {status}"
    room = _SUBJECT_LIMIT - len(prefix) - len(suffix) - 1
    if len(name) > room:
        name = name[: room - 3] + "..."
    return f"{prefix}{name}{suffix}"


def message_attributes(report: MissionReport) -> dict[str, dict[str, str]]:
    """`notify` goes in a message attribute that subscriptions filter on."""
    attributes = {
        "mission_id": {"DataType": "String", "StringValue": report.mission_id},
        "status": {"DataType": "String", "StringValue": report.status},
    }
    if report.notify:
        attributes["notify"] = {"DataType": "String", "StringValue": report.notify}
    return attributes


def body_budget(report: MissionReport) -> int:
    """The bytes left for the body once the subject and the attributes are counted (SNS counts
    each attribute's name, data type and value)."""
    envelope = len(email_subject(report).encode())
    for name, attribute in message_attributes(report).items():
        envelope += len(name.encode()) + sum(len(v.encode()) for v in attribute.values())
    return SNS_MESSAGE_LIMIT_BYTES - SAFETY_MARGIN_BYTES - envelope


def email_body(report: MissionReport) -> str:
    """The email, within `body_budget` bytes: failures are listed while they fit (at most
    MAX_FAILURES_LISTED), and the rest are counted and pointed to in the API."""
    duration = "-" if report.duration_seconds is None else f"{report.duration_seconds:.1f} s"
    name = clip(report.name, MAX_FIELD_BYTES)
    cancelled = report.status == "CANCELLED"
    lines = [
        _headline(report, name),
        "",
        f"Transactions:     {report.total} in all, {report.succeeded} succeeded,"
        f" {report.failed} failed" + (f", {report.cancelled} cancelled" if cancelled else ""),
        f"Duration:         {duration}",
        f"Instances:        {report.instances}",
        f"Instance-seconds: {report.instance_seconds:.1f}"
        f" ({report.instance_seconds / max(report.total, 1):.2f} per transaction)",
        f"Estimated cost:   ${report.estimated_cost:.4f}"
        f" (${report.estimated_cost / max(report.total, 1):.6f} per transaction;"
        " list prices, Spot at a typical discount)",
        f"Result:           {clip(report.result_uri or '(none)', MAX_FIELD_BYTES)}",
    ]
    if report.concatenation_uri:
        lines.append(f"Concatenation:    {clip(report.concatenation_uri, MAX_FIELD_BYTES)}")
    if report.manifest_uri:  # in the head, which the failure list's budget never cuts
        lines += [
            f"Receipt:          {clip(report.manifest_uri, MAX_FIELD_BYTES)}",
            f"Receipt sha256:   {clip(report.manifest_sha256 or '(not found)', MAX_FIELD_BYTES)}",
            f"Check it with:    lighthpc verify {clip(report.mission_id, MAX_FIELD_BYTES)}",
        ]
    if report.submitted_by:
        lines.append(f"Submitted by:     {clip(report.submitted_by, MAX_FIELD_BYTES)}")
    if report.error and not cancelled:
        lines += ["", f"The mission failed: {clip(report.error, MAX_ERROR_TEXT_BYTES)}"]
    candidates = report.failures[:MAX_FAILURES_LISTED]
    unlisted = len(report.failures) - len(candidates) + report.more_failures
    if candidates or unlisted:
        lines += ["", "Failed transactions:"]
        # Room kept for the summary line at its longest, so it always fits after the list.
        budget = body_budget(report) - _size(lines)
        budget -= _size([_more_line(report, len(candidates) + unlisted)])
        listed = 0
        for f in candidates:
            line = _failure_line(f)
            if _size([line]) > budget:
                break
            lines.append(line)
            budget -= _size([line])
            listed += 1
        unlisted += len(candidates) - listed
        if unlisted:
            lines.append(_more_line(report, unlisted))
    return "\n".join(lines) + "\n"


def _headline(report: MissionReport, name: str) -> str:
    mission = f"Mission {name!r} ({clip(report.mission_id, MAX_FIELD_BYTES)})"
    if report.status != "CANCELLED":
        return f"{mission} finished: {clip(report.status, MAX_FIELD_BYTES)}."
    by = f" by {clip(report.cancelled_by, MAX_FIELD_BYTES)}" if report.cancelled_by else ""
    at = f" at {report.cancelled_at.isoformat()}" if report.cancelled_at else ""
    return f"{mission} was cancelled{by}{at}."


def _failure_line(f: FailedTransaction) -> str:
    code = "-" if f.exit_code is None else str(f.exit_code)
    text = clip((f.error or "").strip(), MAX_FAILURE_TEXT_BYTES, newline="\n" + _INDENT)
    return (
        f"  #{f.index} [{f.start}, {f.end}) after {f.attempts} attempt(s),"
        f" exit code {code}: {text or '(no message)'}"
    )


def _more_line(report: MissionReport, n: int) -> str:
    return f"  ... and {n} more; the full list: GET /missions/{report.mission_id}/transactions"


def _size(lines: list[str]) -> int:
    return sum(len(line.encode()) + 1 for line in lines)


def pipeline_subject(report: PipelineReport) -> str:
    return _subject("lighthpc pipeline: ", report.name, report.status)


def pipeline_body(report: PipelineReport) -> str:
    """One block per stage: its status, counts, cost, result, receipt and why it failed, with
    its first few failed transactions (MAX_FAILURES_PER_STAGE)."""
    budget = "" if report.budget_usd is None else f" (budget ${report.budget_usd:.2f})"
    lines = [
        f"Pipeline {clip(report.name, MAX_FIELD_BYTES)!r} ({report.pipeline_id}) finished:"
        f" {report.status}.",
        "",
        f"Stages:           {len(report.stages)}",
        f"Estimated cost:   ${report.estimated_cost:.4f}{budget}",
    ]
    if report.submitted_by:
        lines.append(f"Submitted by:     {clip(report.submitted_by, MAX_FIELD_BYTES)}")
    for stage, r in report.stages:
        lines += [
            "",
            f"Stage {stage!r} ({r.mission_id}): {r.status}",
            f"  Transactions:   {r.total} in all, {r.succeeded} succeeded, {r.failed} failed",
            f"  Instances:      {r.instances}, {r.instance_seconds:.1f} instance-seconds,"
            f" ${r.estimated_cost:.4f}",
            f"  Result:         {clip(r.result_uri or '(none)', MAX_FIELD_BYTES)}",
        ]
        if r.concatenation_uri:
            lines.append(f"  Concatenation:  {clip(r.concatenation_uri, MAX_FIELD_BYTES)}")
        if r.manifest_uri:
            lines.append(f"  Receipt:        {clip(r.manifest_uri, MAX_FIELD_BYTES)}")
        if r.error:
            lines.append(f"  Why:            {clip(r.error, MAX_ERROR_TEXT_BYTES)}")
        shown = r.failures[:MAX_FAILURES_PER_STAGE]
        lines += ["  " + _failure_line(f) for f in shown]
        more = len(r.failures) - len(shown) + r.more_failures
        if more:
            lines.append("  " + _more_line(r, more))
    return "\n".join(lines) + "\n"


def publish_pipeline(sns: Any, topic_arn: str, report: PipelineReport) -> str:
    attributes = {
        "pipeline_id": {"DataType": "String", "StringValue": report.pipeline_id},
        "status": {"DataType": "String", "StringValue": report.status},
    }
    if report.notify:
        attributes["notify"] = {"DataType": "String", "StringValue": report.notify}
    response = sns.publish(
        TopicArn=topic_arn,
        Subject=pipeline_subject(report),
        Message=pipeline_body(report),
        MessageAttributes=attributes,
    )
    return str(response["MessageId"])


def publish(sns: Any, topic_arn: str, report: MissionReport) -> str:
    """Publish the email (one message: `email_body` keeps it within SNS's limit)."""
    response = sns.publish(
        TopicArn=topic_arn,
        Subject=email_subject(report),
        Message=email_body(report),
        MessageAttributes=message_attributes(report),
    )
    return str(response["MessageId"])
