"""A 100,000-transaction mission in the browser: how long the page takes to draw its map, and
what each live refresh transfers. Measured, not asserted with a timer: the figures go to
docs/screenshots/big-mission.json (and README); the test holds only what is not a time (one
cell per transaction, every refresh bounded in calls and bytes).

The API here is a stand-in that answers like chalicelib.dashboard does for such a mission
(60,000 counted, 100 running, the rest never claimed), so the figures are the page's and the
forwarder's alone: the real store's side is one bounded query per map chunk.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from local.client import RuntimeInfo
from local.dashboard import DashboardServer
from tests.browser.conftest import SCREENSHOTS, screenshot, wait_until

TOTAL, COUNTED, RUNNING = 100_000, 60_000, 100
MISSION = "m-20260101000000-0badcafe"
MAP_CHUNK = 10_000
INSTANCES = [f"i-{n:017x}" for n in range(8)]


def _status(i: int) -> str:
    if i < COUNTED:
        return "F" if i % 997 == 0 else "S"
    return "R" if i < COUNTED + RUNNING else "P"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def answer(path: str, query: dict[str, list[str]]) -> dict:
    counts = {
        "PENDING": TOTAL - COUNTED - RUNNING,
        "RUNNING": RUNNING,
        "SUCCEEDED": COUNTED - COUNTED // 997 - 1,
        "FAILED": COUNTED // 997 + 1,
        "CANCELLED": 0,
        "total": TOTAL,
    }
    if path.endswith("/outcome"):
        return {
            "mission_id": MISSION,
            "name": "100,000 transactions",
            "status": "RUNNING",
            "error": None,
            "submitted_by": "local",
            "created_at": "2026-01-01T00:00:00+00:00",
            "started_at": "2026-01-01T00:00:01+00:00",
            "running_at": "2026-01-01T00:00:02+00:00",
            "finished_at": None,
            "notified_at": None,
            "result": None,
            "transactions": counts,
            "instances": len(INSTANCES),
            "instance_seconds": 12345.0,
            "estimated_cost_usd": 0.42,
            "now": _now(),
            "manifest": None,
            "email": None,
        }
    if path.endswith("/map"):
        first = int(query.get("first", ["0"])[0])
        last = min(TOTAL - 1, int(query.get("last", [str(TOTAL - 1)])[0]), first + MAP_CHUNK - 1)
        statuses = "".join(_status(i) for i in range(first, last + 1))
        failures = [
            {"index": i, "span": 1, "attempts": 3, "exit_code": 1, "error_tail": "boom"}
            for i in range(first, last + 1)
            if statuses[i - first] == "F"
        ][:100]
        return {
            "mission_id": MISSION,
            "status": "RUNNING",
            "total": TOTAL,
            "claim_cursor": COUNTED + RUNNING,
            "transactions": counts,
            "first": first,
            "last": last,
            "next_first": None,
            "per_cell": 1,
            "statuses": statuses,
            "failures": failures,
        }
    if path.endswith("/timeline"):
        after = int(query.get("after", ["-1"])[0])
        limit = min(1000, int(query.get("limit", ["1000"])[0]))
        start = time.time() - 600
        attempts = [
            {
                "index": i,
                "span": 1,
                "instance": INSTANCES[i % len(INSTANCES)],
                "status": "RUNNING" if _status(i) == "R" else "SUCCEEDED",
                "started_at": datetime.fromtimestamp(start + i * 0.005, UTC).isoformat(),
                "finished_at": None
                if _status(i) == "R"
                else datetime.fromtimestamp(start + i * 0.005 + 2, UTC).isoformat(),
                "run_seconds": 2.0,
                "attempts": 1,
                "exit_code": 0,
            }
            for i in range(after + 1, min(TOTAL, after + 1 + limit))
            if _status(i) in "SR"
        ]
        instances = [
            {"instance_id": i, "state": "running", "launched_at": None, "market": "spot"}
            for i in INSTANCES
        ]
        return {
            "mission_id": MISSION,
            "status": "RUNNING",
            "now": _now(),
            "claim_cursor": COUNTED + RUNNING,
            "attempts": attempts,
            "marks": [],
            "instances": instances if after == -1 else None,
            "next_after": after + limit,
        }
    return {"error": f"no route {path}"}


class FakeApi(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        body = json.dumps(answer(parts.path, parse_qs(parts.query))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_100000_transaction_mission(browser):
    api = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    host, port = api.server_address[:2]
    info = RuntimeInfo(
        stage="local",
        region="us-east-1",
        aws_endpoint="",
        api_url=f"http://{host}:{port}",
        source_bucket="",
        result_bucket="",
        topic_arn="",
        outbox="",
        workers="",
        pid=0,
    )
    try:
        with DashboardServer(info) as dashboard:
            started = time.perf_counter()
            browser.get(f"{dashboard.url}/?poll=1000#/m/{MISSION}")
            stats = wait_until(
                lambda: browser.execute_script(
                    "const s = window.lighthpcDashboard.stats;"
                    " return s.mapLoadedMs && s.refreshes >= 1 ? {...s} : null"
                ),
                120,
                "the whole map",
            )
            loaded_wall = time.perf_counter() - started
            assert browser.find_element("id", "map").get_attribute("data-cells") == str(TOTAL)
            first = dict(stats)
            # Five live refreshes after the first load: what each one transfers.
            wait_until(
                lambda: (
                    browser.execute_script("return window.lighthpcDashboard.stats.refreshes")
                    >= first["refreshes"] + 5
                ),
                60,
                "five refreshes",
            )
            later = browser.execute_script("return {...window.lighthpcDashboard.stats}")
            navigation = browser.execute_script(
                "const n = performance.getEntriesByType('navigation')[0];"
                " return {dom: n.domContentLoadedEventEnd}"
            )
            screenshot(browser, "big-mission")
    finally:
        api.shutdown()
    refreshes = later["refreshes"] - first["refreshes"]
    per_refresh_bytes = (later["bytes"] - first["bytes"]) / refreshes
    per_refresh_calls = (later["calls"] - first["calls"]) / refreshes
    figures = {
        "transactions": TOTAL,
        "first_map_render_ms": round(first["firstMapMs"]),
        "whole_map_loaded_ms": round(first["mapLoadedMs"]),
        "dom_content_loaded_ms": round(navigation["dom"]),
        "wall_seconds_to_whole_map_and_first_refresh": round(loaded_wall, 2),
        "first_load_calls": first["calls"],
        "first_load_bytes": first["bytes"],
        "bytes_per_refresh": round(per_refresh_bytes),
        "calls_per_refresh": round(per_refresh_calls, 1),
        "measured_at": _now(),
    }
    (SCREENSHOTS / "big-mission.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures))
    # Bounded, whatever the mission's size: the outcome, three map chunks at most, two
    # timeline pages; never the whole map again.
    assert per_refresh_calls <= 6
    assert per_refresh_bytes < 3 * MAP_CHUNK + 100_000  # three map chunks, 300 attempts
    assert re.fullmatch(r"\d+", str(figures["first_map_render_ms"]))
