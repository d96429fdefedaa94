"""The chaos suite: missions on the local stack under chaos, and what survived, as a table.

`lighthpc chaos` (and `make chaos`) starts the stack with every chaos switch on, runs several
missions (half config-first, half upload-first), waits for their emails, then checks each
transaction, email and merged result. The table's last four columns must read 0, 0 or more,
1 and yes: no transaction lost, exactly one email per mission, results equal to one process.
Each handler switched to crash must have crashed on a batch of mission traffic ("handlers not
crashed" reads []): a switch that never fired tested nothing.

The embedded AWS runs the AWS-fidelity profile (local/fidelity.py, `CHAOS_FIDELITY`): hot items
throttled, TransactionConflicts, GSI lag, AWS's size limits, EC2 Fleet shortfalls, latency. Its
ledger is the row's `injected.<name>` and the second table; the conflicts, throttles and GSI lag
it is meant to exercise must each have been injected ("faults not injected" reads []). S3 events
are delayed, reordered and duplicated by the chaos switches (`max_delay_seconds`, `duplicate`).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from local.chaos import ChaosOptions
from local.demo import INPUT_KEY, demo_config, demo_input, expected_result
from local.fidelity import FidelityOptions

REFERENCES = 240
SLOW_REF_LENGTH = 4000  # slower slices, so chaos strikes workers mid-transaction
CHAOS = ChaosOptions(
    kill_fraction=0.3,
    spot_fraction=0.2,
    spot_notice_seconds=3.0,
    duplicate=2,
    max_delay_seconds=0.3,
    crash_once=("light_scheduler", "result_processor"),  # each on its first mission batch
    fate_window=(0.5, 3.0),
)
# AWS's figures, except for a hot item. A mission of this size never writes one item 1,000 times
# a second (nor could moto, some 10x slower than DynamoDB: MOTO_NOTES.md), so at AWS's figure the
# suite would test no throttling at all; at 10 writes/s the mission's busiest items (its cursor
# and counters) are throttled in every burst, and the suite shows the product rides it out.
CHAOS_FIDELITY = FidelityOptions(
    hot_item_writes_per_second=10.0,
    conflict_window_seconds=0.02,
    gsi_lag_seconds=1.0,
    insufficient_capacity_rate=0.1,
    fleet_shortfall_rate=0.2,
)


@dataclass(frozen=True)
class SuiteOptions:
    missions: int = 4
    transactions: int = 24
    workers_per_mission: int = 3
    max_workers: int = 8
    chaos: ChaosOptions = field(default_factory=lambda: CHAOS)
    fidelity: FidelityOptions | None = field(default_factory=lambda: CHAOS_FIDELITY)
    lease_seconds: int = 4
    sweep_seconds: float = 1.0
    timeout_seconds: float = 300.0


def run_suite(options: SuiteOptions, echo: Any = print) -> dict[str, Any]:
    from local.client import api, s3_client
    from local.runtime import LocalRuntime

    home = Path(tempfile.mkdtemp(prefix="lighthpc-chaos-"))
    runtime = LocalRuntime(
        home=home,
        aws_port=0,
        api_port=0,
        max_workers=options.max_workers,
        echo=lambda _: None,
        sweep_seconds=options.sweep_seconds,
        worker_env={"LEASE_SECONDS": str(options.lease_seconds), "SPOT_POLL_SECONDS": "0.3"},
        chaos=options.chaos,
        fidelity=options.fidelity,
    )
    began = time.monotonic()
    info = runtime.start()
    sample = demo_input(REFERENCES)
    try:
        s3 = s3_client(info)
        missions: list[str] = []
        for n in range(options.missions):
            config = demo_config(options.transactions, REFERENCES, options.workers_per_mission)
            config |= {"name": f"chaos {n}", "input": f"chaos/{n}/{INPUT_KEY}", "max_attempts": 5}
            config["app"]["params"]["ref_length"] = SLOW_REF_LENGTH
            upload_first = n % 2 == 1
            if upload_first:
                s3.put_object(Bucket=info.source_bucket, Key=config["input"], Body=sample.encode())
            status, body = api(info, "POST", "/missions", config)
            if status != 201:
                raise RuntimeError(f"config refused: {status} {body}")
            missions.append(body["mission_id"])
            if not upload_first:
                s3.put_object(Bucket=info.source_bucket, Key=config["input"], Body=sample.encode())
        echo(f"{len(missions)} missions submitted; waiting for their emails...")
        finals = _wait_for_all(info, missions, options.timeout_seconds)
        time.sleep(3 * options.sweep_seconds + 2)  # time for a duplicate email to show itself
        expected = expected_result(sample, REFERENCES, SLOW_REF_LENGTH)
        lost = 0
        equal = 0
        for mission_id, mission in finals.items():
            _, listed = api(info, "GET", f"/missions/{mission_id}/transactions")
            lost += sum(t["status"] != "SUCCEEDED" for t in listed["transactions"])
            if mission.get("result"):
                bucket, key = mission["result"].removeprefix("s3://").split("/", 1)
                merged = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                equal += merged == expected
        emails = Counter(
            m for p in Path(info.outbox).glob("*.eml") if (m := _mission_of_email(p)) is not None
        )
        runs = _completions(Path(info.workers))
        stale = _stale_outcomes_counted(missions)
        concurrent = _concurrent_double_runs(Path(info.workers))
    finally:
        runtime.stop()
    ledger = runtime.chaos.ledger.as_dict() if runtime.chaos else {}
    # A crash switch that never fired (no mission traffic reached the handler) tested nothing.
    crashed = runtime.chaos.crashed if runtime.chaos else set()
    not_crashed = sorted(set(options.chaos.crash_once) - crashed)
    injected = runtime.fidelity.ledger.as_dict() if runtime.fidelity else {}
    idle = idle_faults(runtime.fidelity.options, injected) if runtime.fidelity else []
    return {
        "missions": len(missions),
        "transactions": len(missions) * options.transactions,
        "workers_killed": ledger.get("workers_killed", 0),
        "notices_sent": ledger.get("notices_sent", 0),
        "duplicate_events": ledger.get("duplicate_deliveries", 0),
        "handler_crashes": ledger.get("handler_crashes", 0),
        "handlers_not_crashed": not_crashed,
        "lost": lost,
        "run_twice": sum(1 for n in runs.values() if n > 1),
        "stale_outcomes_counted": stale,
        "concurrent_double_runs": concurrent,
        "emails_per_mission": sorted({emails.get(m, 0) for m in missions}),
        "results_equal": f"{equal}/{len(missions)}",
        "seconds": round(time.monotonic() - began, 1),
        **{f"injected.{name}": n for name, n in injected.items()},
        "faults_not_injected": idle,
        "ok": lost == 0
        and stale == 0
        and all(emails.get(m, 0) == 1 for m in missions)
        and equal == len(missions)
        and not not_crashed
        and not idle,
    }


def idle_faults(options: FidelityOptions, injected: dict[str, float]) -> list[str]:
    """The faults the profile turns on for missions to meet that none met: a fault never
    injected tested nothing. (Fleet shortfalls are drawn per call, size limits need a large
    write: neither is owed.)"""
    owed = {
        "throttles": (options.hot_item_writes_per_second, injected.get("throttles", 0)),
        "conflicts": (
            options.conflict_window_seconds,
            injected.get("transaction_conflicts", 0) + injected.get("write_conflicts", 0),
        ),
        "gsi_lag_hides": (options.gsi_lag_seconds, injected.get("gsi_lag_hides", 0)),
    }
    return sorted(name for name, (enabled, count) in owed.items() if enabled and not count)


def _wait_for_all(info: Any, missions: list[str], timeout: float) -> dict[str, dict]:
    from local.client import api

    deadline = time.monotonic() + timeout
    finals: dict[str, dict] = {}
    while len(finals) < len(missions):
        if time.monotonic() > deadline:
            stuck = []
            for mission_id in set(missions) - set(finals):
                _, mission = api(info, "GET", f"/missions/{mission_id}")
                _, page = api(info, "GET", f"/missions/{mission_id}/transactions")
                unfinished = [
                    {k: t[k] for k in ("index", "status", "attempts", "lease_owner", "error")}
                    for t in page.get("transactions", [])
                    if t["status"] != "SUCCEEDED"
                ]
                stuck.append(
                    {
                        k: mission.get(k)
                        for k in (
                            "mission_id",
                            "status",
                            "error",
                            "transactions",
                            "instances",
                            "notified_at",
                        )
                    }
                    | {"unfinished": unfinished}
                )
            raise TimeoutError(f"missions unfinished at timeout: {json.dumps(stuck)}")
        for mission_id in missions:
            if mission_id in finals:
                continue
            _, mission = api(info, "GET", f"/missions/{mission_id}")
            if mission["status"] in {"SUCCEEDED", "FAILED", "CANCELLED"} and mission.get(
                "notified_at"
            ):
                finals[mission_id] = mission
        time.sleep(0.5)
    return finals


def _mission_of_email(path: Path) -> str | None:
    match = re.search(r"^X-Lighthpc-Mission: (\S+)$", path.read_text(), re.MULTILINE)
    return match.group(1) if match else None


def _stale_outcomes_counted(missions: list[str]) -> int:
    """Transactions whose counted outcome is not their holding claim's (it must be: a stale
    part, from a claim handed back or taken back, never counts). Read from the store itself:
    the suite runs in the stack's process."""
    from chalicelib.context import get_context
    from chalicelib.layout import part_key
    from chalicelib.states import TransactionStatus

    store = get_context().store
    return sum(
        1
        for mission_id in missions
        for t in store.transactions.of(mission_id)
        if t.status is TransactionStatus.SUCCEEDED
        and t.part_key != part_key(mission_id, t.index, t.claim, t.span)
    )


def _concurrent_double_runs(workers: Path) -> int:
    """(mission, index) that two workers ran to a success at overlapping times (from their JSON
    logs: each success is logged at its end with its run time). Sequential re-runs, after a
    lost worker's lease expired, are expected; overlapping ones mean two held it at once."""
    runs: dict[tuple[Any, Any], list[tuple[float, float, str]]] = {}
    for log in workers.glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if '"transaction succeeded"' not in line:
                continue
            try:
                entry = json.loads(line)
                end = datetime.strptime(entry["timestamp"], "%Y-%m-%d %H:%M:%S,%f%z").timestamp()
            except (ValueError, KeyError):
                continue
            began = end - float(entry.get("seconds", 0))
            for index in _members(entry):  # a block's success is logged once, for all of it
                runs.setdefault((entry.get("mission_id"), index), []).append((began, end, log.stem))
    overlapping = 0
    for spans in runs.values():
        spans.sort()
        reach, reacher = float("-inf"), ""  # the latest end so far, and whose
        for start, end, worker in spans:
            if start < reach and worker != reacher:
                overlapping += 1
                break
            if end > reach:
                reach, reacher = end, worker
    return overlapping


def _completions(workers: Path) -> Counter:
    """(mission, index) -> how many workers ran it to a success (from their JSON logs)."""
    runs: Counter = Counter()
    for log in workers.glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if '"transaction succeeded"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            for index in _members(entry):
                runs[(entry.get("mission_id"), index)] += 1
    return runs


def _members(entry: dict[str, Any]) -> range:
    """The transactions a worker's log line reports: a block's `index` and `span` of them."""
    index = entry.get("index")
    if not isinstance(index, int):
        return range(0)
    return range(index, index + int(entry.get("span", 1)))


COLUMNS = [
    ("missions", "missions"),
    ("transactions", "transactions"),
    ("workers_killed", "workers killed"),
    ("notices_sent", "Spot notices"),
    ("duplicate_events", "duplicate events"),
    ("handler_crashes", "handler crashes"),
    ("handlers_not_crashed", "handlers not crashed"),
    ("lost", "lost"),
    ("run_twice", "run twice to completion"),
    ("stale_outcomes_counted", "stale outcomes counted"),
    ("concurrent_double_runs", "concurrent double runs"),
    ("emails_per_mission", "emails per mission"),
    ("results_equal", "results equal"),
    ("seconds", "seconds"),
]
INJECTED_PREFIX = "injected."


def _one_row(cells: list[tuple[str, str]]) -> str:
    widths = [max(len(t), len(v)) for t, v in cells]
    head = " | ".join(t.ljust(w) for (t, _), w in zip(cells, widths, strict=True))
    rule = "-|-".join("-" * w for w in widths)
    body = " | ".join(v.ljust(w) for (_, v), w in zip(cells, widths, strict=True))
    return f"| {head} |\n|-{rule}-|\n| {body} |"


def table(row: dict[str, Any]) -> str:
    """The outcome table; with the fidelity profile on, a second one of what it injected."""
    text = _one_row([(title, str(row[key])) for key, title in COLUMNS])
    injected = [
        (key.removeprefix(INJECTED_PREFIX).replace("_", " "), f"{value:g}")
        for key, value in row.items()
        if key.startswith(INJECTED_PREFIX)
    ]
    if injected:
        injected.append(("faults not injected", str(row.get("faults_not_injected", []))))
        text += "\n\ninjected by the AWS-fidelity profile:\n" + _one_row(injected)
    return text
