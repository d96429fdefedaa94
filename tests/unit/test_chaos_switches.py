"""The chaos switches do what they say: a handler crash lands on mission traffic, bad switches
are refused before a stack starts. Decisions only: no AWS here."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chalice.app import SQSEventConfig

import app as app_module
import local.cli
from local.chaos import CRASHABLE_HANDLERS, Chaos, ChaosOptions
from local.pump import QueuePoller

START = json.dumps({"type": "lighthpc:start", "mission_id": "m-1"})
TEST_EVENT = json.dumps(
    {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b", "RequestId": "r"}
)


def s3_body(bucket: str, key: str) -> str:
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 5, "eTag": "e"}},
    }
    return json.dumps({"Records": [record]})


PART = s3_body("results", "parts/m-1/00000003.1.out")
FAILED_PART = s3_body("results", "parts/m-1/00000004.1.failed")
MERGED = s3_body("results", "results/m-1/result.out")
UPLOAD = s3_body("source", "inputs/x.fa")


def chaos(**options: Any) -> Chaos:
    return Chaos(ChaosOptions(**options))


# ---- which batches a crash may hit ---------------------------------------------------------


def test_the_crashable_handlers_are_the_sqs_handlers_app_registers() -> None:
    registered = {s.name for s in app_module.app.event_sources if isinstance(s, SQSEventConfig)}
    assert set(CRASHABLE_HANDLERS) == registered == {"light_scheduler", "result_processor"}


def test_result_processor_crashes_on_the_first_outcome_batch_not_before() -> None:
    c = chaos(crash_once=("result_processor",))
    assert c.crash_point("result_processor", [TEST_EVENT]) is None  # start-up: no mission yet
    assert c.crash_point("result_processor", [MERGED]) is None  # a merged result is no outcome
    assert c.crash_point("result_processor", [MERGED, PART]) is not None
    assert c.crash_point("result_processor", [PART]) is None  # once
    assert c.ledger.handler_crashes == 1
    assert c.crashed == {"result_processor"}


def test_a_failure_marker_is_an_outcome_too() -> None:
    assert chaos(crash_once=("result_processor",)).crash_point("result_processor", [FAILED_PART])


def test_light_scheduler_crashes_on_a_start_request_or_an_upload() -> None:
    c = chaos(crash_once=("light_scheduler",))
    assert c.crash_point("light_scheduler", [TEST_EVENT]) is None
    assert c.crash_point("light_scheduler", ["not json"]) is None  # a poison message
    assert c.crash_point("light_scheduler", [START]) == 1
    c = chaos(crash_once=("light_scheduler",))
    assert c.crash_point("light_scheduler", [UPLOAD]) == 1
    assert c.ledger.handler_crashes == 1


def test_only_the_named_handler_crashes() -> None:
    c = chaos(crash_once=("light_scheduler",))
    assert c.crash_point("result_processor", [PART]) is None
    assert c.ledger.handler_crashes == 0 and c.crashed == set()


def test_the_nth_mission_batch_crashes() -> None:
    c = chaos(crash_once=("result_processor",), crash_on_batch=3)
    assert c.crash_point("result_processor", [PART]) is None
    assert c.crash_point("result_processor", [TEST_EVENT]) is None  # not counted
    assert c.crash_point("result_processor", [PART]) is None
    assert c.crash_point("result_processor", [PART]) is not None
    assert c.crash_point("result_processor", [PART]) is None
    assert c.ledger.handler_crashes == 1


def test_the_handled_part_of_a_crashed_batch_reaches_the_mission_record() -> None:
    c = chaos(crash_once=("result_processor",))
    bodies = [MERGED, TEST_EVENT, MERGED, PART, MERGED, MERGED]
    assert c.crash_point("result_processor", bodies) == 4  # the part is handled, then the crash
    c = chaos(crash_once=("result_processor",))
    bodies = [PART] + [MERGED] * 9
    assert c.crash_point("result_processor", bodies) == 5  # half the batch, as before


def test_the_poller_crashes_after_handling_the_mission_record() -> None:
    calls: list[list[str]] = []

    def handler(event: dict, context: Any) -> None:
        calls.append([r["body"] for r in event["Records"]])

    poller = QueuePoller(
        None, handler, "result_processor", chaos=chaos(crash_once=("result_processor",))
    )  # type: ignore[arg-type]
    poller._invoke({"Records": [{"body": TEST_EVENT}]})
    assert calls == [[TEST_EVENT]]  # the start-up batch goes through
    with pytest.raises(RuntimeError, match="chaos: result_processor crashed"):
        poller._invoke({"Records": [{"body": MERGED}, {"body": PART}, {"body": MERGED}]})
    assert calls[-1] == [MERGED, PART]
    poller._invoke({"Records": [{"body": PART}]})  # redelivered: no second crash
    assert calls[-1] == [PART]


# ---- bad switches --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"crash_once": ("nope",)}, "crash_once"),
        ({"kill_fraction": 1.5}, "kill_fraction"),
        ({"kill_fraction": -0.1}, "kill_fraction"),
        ({"spot_fraction": 2.0}, "spot_fraction"),
        ({"kill_fraction": 0.6, "spot_fraction": 0.5}, "kill_fraction + spot_fraction"),
        ({"duplicate": 0}, "duplicate"),
        ({"max_delay_seconds": -1.0}, "max_delay_seconds"),
        ({"spot_notice_seconds": -1.0}, "spot_notice_seconds"),
        ({"crash_on_batch": 0}, "crash_on_batch"),
        ({"fate_window": (3.0, 1.0)}, "fate_window"),
        ({"kill_fraction": float("nan")}, "kill_fraction"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named.replace("+", r"\+")):
        ChaosOptions(**options)


def test_good_options_are_accepted() -> None:
    ChaosOptions(
        kill_fraction=0.5, spot_fraction=0.5, duplicate=3, crash_once=tuple(CRASHABLE_HANDLERS)
    )


@pytest.fixture
def no_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the stack must not start")

    monkeypatch.setattr(local.cli, "LocalRuntime", refuse)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--crash-once", "nope"], "--crash-once"),
        (["--crash-once", "result_processor", "--crash-once", "sweeper"], "--crash-once"),
        (["--kill-fraction", "1.5"], "--kill-fraction"),
        (["--kill-fraction", "-0.2"], "--kill-fraction"),
        (["--spot-fraction", "1.01"], "--spot-fraction"),
        (["--kill-fraction", "0.7", "--spot-fraction", "0.4"], "--spot-fraction"),
        (["--duplicate", "0"], "--duplicate"),
        (["--duplicate", "-2"], "--duplicate"),
        (["--max-delay", "-1"], "--max-delay"),
        (["--spot-notice-seconds", "-5"], "--spot-notice-seconds"),
        (["--crash-batch", "0"], "--crash-batch"),
    ],
)
def test_lighthpc_up_refuses_bad_switches_before_starting(
    no_stack: None, tmp_path: Any, capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    try:
        code = local.cli.main(["--home", str(tmp_path), "up", *flags])
    except SystemExit as e:  # argparse's refusal
        code = e.code
    assert code not in (0, None)
    assert named in capsys.readouterr().err
