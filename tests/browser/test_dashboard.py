"""The dashboard in a real browser during real missions on the local stack, with workers lost on
purpose (`--kill-fraction`) and an app that fails some transactions for good and others once:
the page's numbers are the API's, the map has a cell per transaction, the timeline a row per
worker, cancel works from the keyboard, and the page says so when the stack stops.

Screenshots land in docs/screenshots/ (README shows one). Order matters: the last test stops
the stack.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.browser.conftest import PHONE, LocalStack, screenshot, wait_until

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
POLL = "?poll=600"  # refresh faster than a person needs, so the tests wait less

# Fails index%9==4 on every attempt, index%5==1 on its first attempt only; else writes a line.
# No braces: argv elements are templates.
FLAKY = (
    "import sys, time; s = int(sys.argv[1]); a = int(sys.argv[2]); time.sleep(0.5);"
    " sys.exit('index %d: simulated failure' % s) if s % 9 == 4 or (s % 5 == 1 and a < 2)"
    " else open(sys.argv[3], 'w').write('%d\\n' % s)"
)
SLOW = "import sys, time; time.sleep(4); open(sys.argv[1], 'w').write('done\\n')"


def mission_config(name: str, key: str, count: int, code: str, argv: list[str]) -> dict:
    return {
        "name": name,
        "input": key,
        "split": {"mode": "count", "count": count, "interval": {"start": 0, "end": count}},
        "app": {"argv": ["{python}", "-c", code, *argv]},
        "instances": {"max_instances": 3, "slots": 2},
        "max_attempts": 2,
        "notify": "you@example.org",
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("browser-home")
    flags = ["--max-workers", "4", "--kill-fraction", "0.5", "--lease-seconds", "4"]
    running = LocalStack(home, *flags, "--sweep-seconds", "1")
    yield running
    code = running.stop()
    assert code == 0, running.log()


def submit(stack: LocalStack, config: dict) -> str:
    status, body = stack.api("POST", "/missions", config)
    assert status == 201, body
    stack.upload(config["input"], b"anything\n")
    return body["mission_id"]


def page_counts(browser) -> dict[str, str]:
    cells = browser.find_elements("css selector", "#m-counts dd")
    return {c.get_attribute("data-count"): c.text for c in cells}


def api_counts(mission: dict) -> dict[str, str]:
    c = mission["transactions"]
    keys = {"total": "total", "succeeded": "SUCCEEDED", "failed": "FAILED"}
    keys |= {"running": "RUNNING", "pending": "PENDING", "cancelled": "CANCELLED"}
    return {shown: f"{c[key]:,}" for shown, key in keys.items()}


def every_transaction(stack: LocalStack, mission_id: str) -> list[dict]:
    rows, after = [], -1
    while after is not None:
        _, page = stack.api("GET", f"/missions/{mission_id}/transactions?after={after}")
        rows += page["transactions"]
        after = page["next_after"]
    return rows


def canvas(browser) -> dict[str, str]:
    element = browser.find_element("id", "map")
    return {k: element.get_attribute(f"data-{k}") for k in ("cells", "first", "last", "counts")}


def test_a_mission_live_and_finished(stack: LocalStack, browser):
    config = mission_config("flaky fan-out", "browser/flaky.txt", 30, FLAKY, [])
    config["app"]["argv"] += ["{start}", "{attempt}", "{output}"]
    mission_id = submit(stack, config)
    browser.get(f"{stack.dashboard}/{POLL}#/m/{mission_id}")
    # Live: the page moves on without a reload while transactions run.
    wait_until(
        lambda: "R" in canvas(browser)["counts"] and json.loads(canvas(browser)["counts"])["R"],
        120,
        "a running transaction on the map",
    )
    screenshot(browser, "mission-running")
    wait_until(
        lambda: browser.find_elements("css selector", ".tl-row[data-attempts]"),
        60,
        "a worker on the timeline",
    )

    def finished() -> dict | None:
        _, mission = stack.api("GET", f"/missions/{mission_id}")
        return mission if mission["status"] in TERMINAL and mission["notified_at"] else None

    mission = wait_until(finished, 150, "the mission's end and email", interval=1)
    wait_until(
        lambda: browser.find_element("id", "m-status").text == mission["status"],
        20,
        "the page to show the end",
    )
    wait_until(lambda: "sent" in browser.find_element("id", "m-result").text, 20, "the email")
    # The page's numbers are the API's.
    assert page_counts(browser) == api_counts(mission)
    # One cell per transaction, each the status the API gives it.
    rows = every_transaction(stack, mission_id)
    drawn = canvas(browser)
    assert int(drawn["cells"]) == mission["transactions"]["total"] == len(rows) == 30
    names = {"S": "SUCCEEDED", "F": "FAILED", "C": "CANCELLED", "R": "RUNNING"}
    names |= {"P": "PENDING", "W": "PENDING"}
    on_map: Counter[str] = Counter()
    for code, n in json.loads(drawn["counts"]).items():
        on_map[names[code]] += n
    assert +on_map == +Counter(t["status"] for t in rows)
    # The failures are the API's failed transactions, with their exit codes.
    failed = {t["index"]: t for t in rows if t["status"] == "FAILED"}
    assert failed, "the app fails index%9==4 for good"
    shown = browser.find_elements("css selector", "#failures tbody tr")
    assert {int(r.get_attribute("data-index")) for r in shown} == set(failed)
    assert all("simulated failure" in r.text for r in shown)
    # Retries happened (index%5==1 fails once) and the map and the page agree they are done.
    assert any(t["attempts"] == 2 and t["status"] == "SUCCEEDED" for t in rows)
    # Every worker that ran (each has its log under the stack's home) has its row.
    workers = {p.stem for p in Path(stack.info["workers"]).glob("i-*.log")}
    timeline_rows = {
        r.get_attribute("data-instance") for r in browser.find_elements("css selector", ".tl-row")
    }
    assert workers and workers <= timeline_rows
    owners = {t["lease_owner"].split("/")[0] for t in rows if t["lease_owner"]}
    assert owners <= timeline_rows
    lost = [t for t in rows if t["error"] and "worker lost" in t["error"]]
    if lost:  # the kill switch hit a worker holding work: its row says so
        assert browser.find_elements("css selector", ".tl-row .mark.lost")
    screenshot(browser, "mission-finished")
    screenshot(browser, "mission-finished-phone", PHONE)

    # The missions page: the same numbers as the API, newest first, filterable.
    browser.get(f"{stack.dashboard}/{POLL}#/")
    row = wait_until(
        lambda: browser.find_element("css selector", f"tr[data-mission='{mission_id}']"),
        20,
        "the mission's row",
    )
    for key in ("SUCCEEDED", "FAILED", "RUNNING", "PENDING"):
        cell = row.find_element("css selector", f"td[data-count='{key}']")
        assert cell.text == f"{mission['transactions'][key]:,}"
    screenshot(browser, "missions")
    screenshot(browser, "missions-phone", PHONE)
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "status-filter")).select_by_visible_text("SUCCEEDED")
    filtered_out = mission["status"] != "SUCCEEDED"
    row_selector = f"tr[data-mission='{mission_id}']"
    wait_until(
        lambda: (not browser.find_elements("css selector", row_selector)) == filtered_out,
        10,
        "the status filter",
    )


def test_cancel_from_the_page_by_keyboard(stack: LocalStack, browser):
    from selenium.webdriver.common.keys import Keys

    config = mission_config("slow, to be cancelled", "browser/slow.txt", 24, SLOW, ["{output}"])
    mission_id = submit(stack, config)
    browser.get(f"{stack.dashboard}/{POLL}#/m/{mission_id}")

    def running() -> bool:
        _, mission = stack.api("GET", f"/missions/{mission_id}")
        return mission["status"] == "RUNNING" and mission["transactions"]["RUNNING"] > 0

    wait_until(running, 90, "the mission to run", interval=0.5)
    button = wait_until(
        lambda: (
            browser.find_element("id", "cancel").is_displayed()
            and browser.find_element("id", "cancel")
        ),
        20,
        "the cancel button",
    )
    button.send_keys(Keys.ENTER)  # a focused button: Enter presses it
    dialog = browser.find_element("id", "confirm-cancel")
    assert dialog.get_attribute("open") is not None
    # The safe choice has the focus: Tab reaches the cancel, Enter confirms.
    assert browser.switch_to.active_element.get_attribute("id") == "confirm-keep"
    browser.switch_to.active_element.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "confirm-yes"
    screenshot(browser, "cancel-confirmation")
    browser.switch_to.active_element.send_keys(Keys.ENTER)

    def cancelled() -> dict | None:
        _, mission = stack.api("GET", f"/missions/{mission_id}")
        return mission if mission["status"] == "CANCELLED" else None

    mission = wait_until(cancelled, 30, "the API to say CANCELLED")
    assert mission["transactions"]["CANCELLED"] > 0
    wait_until(
        lambda: browser.find_element("id", "m-status").text == "CANCELLED",
        20,
        "the page to say CANCELLED",
    )
    assert not browser.find_element("id", "cancel").is_displayed()


def test_the_page_says_when_the_stack_stops(stack: LocalStack, browser):
    browser.get(f"{stack.dashboard}/{POLL}&again#/")  # a new query: a reload, every filter off
    wait_until(lambda: browser.find_elements("css selector", "#missions tbody tr"), 20, "rows")
    assert stack.stop() == 0
    banner = wait_until(
        lambda: (
            browser.find_element("id", "offline").is_displayed()
            and browser.find_element("id", "offline")
        ),
        20,
        "the offline banner",
    )
    assert banner.get_attribute("data-kind") == "unreachable"
    assert "lighthpc up" in banner.text
    screenshot(browser, "stack-stopped")
