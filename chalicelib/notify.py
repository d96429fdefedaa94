"""The completion email: composed by a pure function, published once to SNS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_FAILURES_LISTED = 50
_SUBJECT_LIMIT = 100  # SNS: ASCII, no line breaks, under 100 characters


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


def email_subject(report: MissionReport) -> str:
    name = report.name.encode("ascii", "replace").decode().replace("\n", " ")
    suffix = f" {report.status}"
    room = _SUBJECT_LIMIT - len("lighthpc: ") - len(suffix) - 1
    if len(name) > room:
        name = name[: room - 3] + "..."
    return f"lighthpc: {name}{suffix}"


def email_body(report: MissionReport) -> str:
    duration = "-" if report.duration_seconds is None else f"{report.duration_seconds:.1f} s"
    lines = [
        f"Mission {report.name!r} ({report.mission_id}) finished: {report.status}.",
        "",
        f"Transactions:     {report.total} in all, {report.succeeded} succeeded,"
        f" {report.failed} failed",
        f"Duration:         {duration}",
        f"Instances:        {report.instances}",
        f"Instance-seconds: {report.instance_seconds:.1f}"
        f" ({report.instance_seconds / max(report.total, 1):.2f} per transaction)",
        f"Estimated cost:   ${report.estimated_cost:.4f}"
        f" (${report.estimated_cost / max(report.total, 1):.6f} per transaction;"
        " list prices, Spot at a typical discount)",
        f"Result:           {report.result_uri or '(none)'}",
    ]
    if report.submitted_by:
        lines.append(f"Submitted by:     {report.submitted_by}")
    if report.error:
        lines += ["", f"The mission failed: {report.error}"]
    if report.failures:
        lines += ["", "Failed transactions:"]
        for f in report.failures[:MAX_FAILURES_LISTED]:
            code = "-" if f.exit_code is None else str(f.exit_code)
            lines.append(
                f"  #{f.index} [{f.start}, {f.end}) after {f.attempts} attempt(s),"
                f" exit code {code}: {(f.error or '').strip() or '(no message)'}"
            )
        if len(report.failures) > MAX_FAILURES_LISTED:
            lines.append(f"  ... and {len(report.failures) - MAX_FAILURES_LISTED} more")
    return "\n".join(lines) + "\n"


def publish(sns: Any, topic_arn: str, report: MissionReport) -> str:
    """Publish the email. `notify` goes in a message attribute that subscriptions filter on."""
    attributes = {
        "mission_id": {"DataType": "String", "StringValue": report.mission_id},
        "status": {"DataType": "String", "StringValue": report.status},
    }
    if report.notify:
        attributes["notify"] = {"DataType": "String", "StringValue": report.notify}
    response = sns.publish(
        TopicArn=topic_arn,
        Subject=email_subject(report),
        Message=email_body(report),
        MessageAttributes=attributes,
    )
    return str(response["MessageId"])
