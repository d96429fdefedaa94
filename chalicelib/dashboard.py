"""What the dashboard reads (issue 14): the missions overview, a mission's transaction map, its
worker timeline and its outcome; plain functions returning dicts (the JSON bodies).

Every answer is bounded per call, whatever the mission's size: the overview reads the newest
`LIST_LIMIT` mission items (no transaction), the map and the timeline read the transaction items
of one bounded index range (`ctx.store.transactions.of`), and the outcome is the mission item
plus one S3 HEAD. A page that wants a whole 100,000-transaction map asks for it range by range,
keeps what can no longer change (a counted outcome) and asks again only for the rest.

One transaction item may stand for several transactions (a block): it covers
`index .. index + span - 1`, all with its status. Indexes without an item were never claimed:
they are PENDING (CANCELLED once their mission is cancelled).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from chalicelib.auth import Caller
from chalicelib.capacity import mission_instances
from chalicelib.config import FieldError, RequestInvalid
from chalicelib.context import Context
from chalicelib.domain import Mission, Transaction, utc
from chalicelib.missions import LIST_LIMIT, describe, mission_summary, visible
from chalicelib.notify import MissionReport, email_subject
from chalicelib.results import receipt_of, transaction_counts
from chalicelib.states import MissionStatus, TransactionStatus, shown_status

MAP_RANGE_LIMIT = 10_000  # indexes one map call covers (and so at most this many items read)
MAP_CELLS_LIMIT = 10_000  # buckets one map answer holds
TIMELINE_RANGE_LIMIT = 1_000  # indexes one timeline call covers
FAILURES_LISTED = 100  # failed transactions one map answer lists
ERROR_TAIL_CHARS = 400  # the end of a stderr tail is where the reason usually is
INSTANCE_LIMIT = 500  # instances one timeline answer lists (a mission's fleet is far smaller)

T = TransactionStatus
# One character per transaction in a map answer: a 100,000-transaction map is 100 KB of JSON.
# W is a PENDING transaction that already ran (a retry waiting, a hand-back, a lost lease).
STATUS_CODES = {
    "P": "PENDING",
    "W": "PENDING (retry waiting)",
    "R": "RUNNING",
    "S": "SUCCEEDED",
    "F": "FAILED",
    "C": "CANCELLED",
}
_CODE_OF = {T.PENDING: "P", T.RUNNING: "R", T.SUCCEEDED: "S", T.FAILED: "F", T.CANCELLED: "C"}

# Reasons the store records on a transaction when an attempt ended without its app's verdict
# (chalicelib.sweeper, chalicelib.interruptions, the agent): they name the instance when known.
_LOST = re.compile(r"lease of (?P<instance>i-[0-9a-zA-Z]+)\S* expired")
_HANDED_BACK = re.compile(r"handed back: Spot interruption(?: of (?P<instance>i-[0-9a-zA-Z]+))?")


def overview(ctx: Context, caller: Caller, status: str | None = None) -> dict[str, Any]:
    """GET /overview: the newest missions the caller may see (as GET /missions), each with its
    counts, instance-seconds and cost from the mission item alone; `status` keeps one status."""
    if status is not None and status not in MissionStatus.__members__:
        allowed = ", ".join(MissionStatus.__members__)
        raise RequestInvalid([FieldError("status", f"must be one of {allowed}")])
    owner = None if caller.operator else caller.principal
    missions = ctx.store.missions.newest(LIST_LIMIT, submitted_by=owner)
    return {
        "missions": [
            {
                **mission_summary(ctx, m),
                "transactions": transaction_counts(m),
                "instances": m.instances,
                "instance_seconds": round(m.instance_seconds, 3),
                "estimated_cost_usd": round(m.estimated_cost, 6),
            }
            for m in missions
            if status is None or m.status.value == status
        ],
        "now": _iso(_now(ctx)),
    }


def _span(t: Transaction) -> int:
    # A block item covers span transactions (the store's blocks); a plain item covers one.
    return max(1, int(getattr(t, "span", 1) or 1))


def _items(
    ctx: Context, mission: Mission, first: int, last: int, covering: bool = False
) -> Iterator[Transaction]:
    """The items keyed first..last (with `covering`, also the block before that reaches into
    the range), as the API tells their status (`shown_status`)."""
    transactions = ctx.store.transactions
    read = transactions.covering if covering else transactions.of
    for t in read(mission.mission_id, first, last):
        shown = shown_status(t.status, t.counted, mission.status)
        yield t if shown is t.status else _with_status(t, shown)


def _with_status(t: Transaction, status: TransactionStatus) -> Transaction:
    return replace(t, status=status)


def _code(t: Transaction) -> str:
    if t.status is T.PENDING and (t.attempts > 0 or t.error):
        return "W"
    return _CODE_OF[t.status]


def transaction_map(
    ctx: Context,
    mission_id: str,
    caller: Caller,
    first: int = 0,
    last: int | None = None,
    cells: int | None = None,
) -> dict[str, Any]:
    """GET /missions/{id}/map: the status of every transaction of first..last (at most
    MAP_RANGE_LIMIT indexes a call; `next_first` continues), one character each, or, with
    `cells` fewer than the indexes, counts per status over that many equal buckets."""
    mission = visible(ctx, mission_id, caller)
    total = mission.total
    end = min(total - 1, first + MAP_RANGE_LIMIT - 1, total - 1 if last is None else last)
    answer: dict[str, Any] = {
        "mission_id": mission_id,
        "status": mission.status.value,
        "total": total,
        "claim_cursor": min(mission.handed_out, total),
        "transactions": transaction_counts(mission),
        "first": first,
        "last": end,
        "next_first": None,
        "codes": STATUS_CODES,
    }
    if total == 0 or first > end:
        return answer | {"last": None, "per_cell": 1, "statuses": "", "failures": []}
    width = end - first + 1
    pending = "C" if mission.status is MissionStatus.CANCELLED else "P"
    codes = [pending] * width
    failures: list[dict[str, Any]] = []
    for t in _items(ctx, mission, first, end, covering=True):
        code = _code(t)
        for i in range(max(t.index, first), min(t.index + _span(t) - 1, end) + 1):
            codes[i - first] = code
        if t.status is T.FAILED and len(failures) < FAILURES_LISTED:
            failures.append(_failure_view(t))
    if end < (total - 1 if last is None else min(last, total - 1)):
        answer["next_first"] = end + 1
    answer["failures"] = failures
    cells = min(cells or width, MAP_CELLS_LIMIT, width)
    if cells >= width:
        return answer | {"per_cell": 1, "statuses": "".join(codes)}
    per_cell = -(-width // cells)  # ceil: the last bucket may be shorter
    buckets = [codes[i : i + per_cell] for i in range(0, width, per_cell)]
    counts = {code: [b.count(code) for b in buckets] for code in STATUS_CODES}
    return answer | {"per_cell": per_cell, "buckets": counts}


def _failure_view(t: Transaction) -> dict[str, Any]:
    error = t.error or ""
    return {
        "index": t.index,
        "span": _span(t),
        "attempts": t.attempts,
        "exit_code": t.exit_code,
        "error_tail": error[-ERROR_TAIL_CHARS:],
        "finished_at": _iso(t.finished_at),
    }


def timeline(
    ctx: Context,
    mission_id: str,
    caller: Caller,
    after: int = -1,
    limit: int = TIMELINE_RANGE_LIMIT,
) -> dict[str, Any]:
    """GET /missions/{id}/timeline: the attempts recorded on the transactions after index
    `after` (at most TIMELINE_RANGE_LIMIT indexes a call; `next_after` continues), each on the
    instance that ran it, with the marks the store keeps of attempts that ended otherwise (a
    Spot hand-back, a lost worker); and the mission's instances (first page only).

    The store keeps a transaction's latest attempt, so an earlier attempt shows only through
    the mark it left (until the transaction's next outcome overwrites it)."""
    mission = visible(ctx, mission_id, caller)
    limit = min(limit, TIMELINE_RANGE_LIMIT)
    first, last = after + 1, min(after + limit, mission.total - 1)
    attempts: list[dict[str, Any]] = []
    marks: list[dict[str, Any]] = []
    if mission.total > 0 and first <= last:
        for t in _items(ctx, mission, first, last):
            attempt = _attempt_view(t)
            if attempt is not None:
                attempts.append(attempt)
            mark = _mark_of(t)
            if mark is not None:
                marks.append(mark)
    return {
        "mission_id": mission_id,
        "status": mission.status.value,
        "now": _iso(_now(ctx)),
        "claim_cursor": min(mission.handed_out, mission.total),
        "attempts": attempts,
        "marks": marks,
        "instances": _instances(ctx, mission) if after == -1 else None,
        "next_after": last if 0 <= last < mission.total - 1 else None,
    }


def _instance_of(owner: str | None) -> str | None:
    # A lease owner is the instance id, or `<instance id>/<slot>` for a worker's slots.
    return owner.split("/", 1)[0] if owner else None


def _attempt_view(t: Transaction) -> dict[str, Any] | None:
    instance = _instance_of(t.lease_owner)
    if instance is None or t.started_at is None:
        return None  # never ran, or taken back from its worker (see its mark)
    return {
        "index": t.index,
        "span": _span(t),
        "instance": instance,
        "status": t.status.value,
        "started_at": _iso(t.started_at),
        "finished_at": _iso(t.finished_at) if t.status is not T.RUNNING else None,
        "run_seconds": t.run_seconds,
        "attempts": t.attempts,
        "exit_code": t.exit_code,
    }


def _mark_of(t: Transaction) -> dict[str, Any] | None:
    if not t.error:
        return None
    lost, handed = _LOST.search(t.error), _HANDED_BACK.search(t.error)
    if lost:
        kind, instance = "lost", lost.group("instance")
    elif handed:
        kind, instance = "spot", handed.group("instance") or _instance_of(t.lease_owner)
    else:
        return None
    return {"index": t.index, "kind": kind, "instance": instance, "reason": t.error[:200]}


def _instances(ctx: Context, mission: Mission) -> list[dict[str, Any]]:
    """The mission's instances as EC2 describes them (by its tag; every state)."""
    states = ["pending", "running", "shutting-down", "terminated", "stopping", "stopped"]
    found = mission_instances(ctx.aws.ec2, mission.mission_id, states)[:INSTANCE_LIMIT]
    return [
        {
            "instance_id": i["InstanceId"],
            "state": i.get("State", {}).get("Name"),
            "launched_at": _iso(i.get("LaunchTime")),
            "market": i.get("InstanceLifecycle") or "on-demand",
            "type": i.get("InstanceType"),
            "state_reason": (i.get("StateReason") or {}).get("Message")
            or i.get("StateTransitionReason")
            or None,
        }
        for i in sorted(found, key=lambda i: (i.get("LaunchTime") or 0, i["InstanceId"]))
    ]


def outcome(ctx: Context, mission_id: str, caller: Caller) -> dict[str, Any]:
    """GET /missions/{id}/outcome: the mission as GET /missions/{id} tells it, with its result,
    its receipt (the manifest and its sha256: one S3 HEAD) and its email once sent."""
    mission = visible(ctx, mission_id, caller)
    manifest_uri, manifest_sha256 = receipt_of(ctx, mission)
    sent = mission.notified_at is not None
    return {
        **describe(ctx, mission_id, caller),
        "now": _iso(_now(ctx)),
        "manifest": {"uri": manifest_uri, "sha256": manifest_sha256} if manifest_uri else None,
        "email": {
            "sent_at": _iso(mission.notified_at),
            "to": mission.notify,
            "subject": email_subject(_report_heading(mission)),
        }
        if sent
        else None,
    }


def _report_heading(mission: Mission) -> MissionReport:
    """Enough of the email's report for its subject (name and status): the full report reads
    every failed transaction, which no bounded call may."""
    return MissionReport(
        mission_id=mission.mission_id,
        name=mission.name,
        status=mission.status.value,
        total=mission.total,
        succeeded=mission.succeeded,
        failed=mission.failed,
        duration_seconds=None,
        instance_seconds=mission.instance_seconds,
        estimated_cost=mission.estimated_cost,
        instances=mission.instances,
        result_uri=None,
        error=mission.error,
        failures=[],
    )


def _now(ctx: Context) -> datetime:
    return utc(ctx.clock())


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
