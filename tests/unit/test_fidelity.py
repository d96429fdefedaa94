"""The AWS-fidelity profile's decisions (local/fidelity.py), without AWS: its options, the
number and size rules, hot-item counting, in-flight windows, GSI lag, fleet rationing, and what
each refusal looks like on the wire."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

import local.cli
from local import fidelity
from local.chaos_suite import CHAOS_FIDELITY, idle_faults, table
from local.fidelity import (
    DEFAULT_LATENCY,
    Fidelity,
    FidelityInvalid,
    FidelityOptions,
    ItemTraffic,
    WriteAction,
    attribute_size,
    caller_of,
    item_size,
    number_problem,
    numbers_in,
    sns_message_bytes,
    validation_problem,
    write_actions,
)

A, B = ("thread", 1), ("thread", 2)  # two callers
KEY = ("missions", '{"mission_id": {"S": "m-1"}}')


def options(**figures) -> FidelityOptions:
    return FidelityOptions(**figures)


def body(answer) -> dict:
    status, headers, text = answer
    assert status == 400 and headers["Content-Type"] == "application/x-amz-json-1.0"
    assert headers["x-amz-crc32"]  # botocore checks it
    return json.loads(text)


# ---- options -------------------------------------------------------------------------------


def test_the_switch_is_off_unless_it_names_the_aws_profile() -> None:
    for spec in (None, "", "off", " OFF "):
        assert FidelityOptions.parse(spec) is None
    assert FidelityOptions.parse("aws") == FidelityOptions()
    with pytest.raises(FidelityInvalid, match="unknown profile 'azure'"):
        FidelityOptions.parse("azure")


def test_a_spec_sets_figures_and_latency_per_service() -> None:
    parsed = FidelityOptions.parse(
        "aws, gsi_lag_seconds=0.25, seed=7, latency.s3=0.05:0.2, latency.sqs=0.01"
    )
    assert parsed is not None
    assert parsed.gsi_lag_seconds == 0.25 and parsed.seed == 7
    assert parsed.latency_seconds == {**DEFAULT_LATENCY, "s3": (0.05, 0.2), "sqs": (0.01, 0.01)}
    assert FidelityOptions.parse("aws,latency=off").latency_seconds == {}


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ("aws,gsi_lag=1", "gsi_lag", "unknown setting"),
        ("aws,gsi_lag_seconds", "gsi_lag_seconds", "expected name=value"),
        ("aws,seed=1.5", "seed", "must be an integer"),
        ("aws,fleet_shortfall_rate=1.5", "fleet_shortfall_rate", "fraction from 0 to 1"),
        ("aws,gsi_lag_seconds=nan", "gsi_lag_seconds", "0 or more"),
        ("aws,latency.s3=0.2:0.1", "latency_seconds", "low <= high"),
        ("aws,latency.s3=fast", "latency.s3", "low:high seconds"),
        ("aws,hot_item_window_seconds=0", "hot_item_window_seconds", "above 0"),
    ],
)
def test_a_setting_that_cannot_be_meant_is_refused(spec: str, field: str, reason: str) -> None:
    with pytest.raises(FidelityInvalid) as refused:
        FidelityOptions.parse(spec)
    assert refused.value.options[0] == field and reason in refused.value.reason


def test_the_fleet_rates_cannot_sum_above_one() -> None:
    with pytest.raises(FidelityInvalid, match=r"sum to 1\.2"):
        options(insufficient_capacity_rate=0.6, fleet_shortfall_rate=0.6)


def test_up_refuses_a_bad_profile_before_anything_starts() -> None:
    with pytest.raises(local.cli.CliError, match="--fidelity seed: must be an integer"):
        local.cli.fidelity_options("aws,seed=x")
    args = local.cli.parser().parse_args(["up", "--fidelity", "aws,gsi_lag_seconds=2"])
    assert local.cli.fidelity_options(args.fidelity) == FidelityOptions(gsi_lag_seconds=2.0)
    assert local.cli.parser().parse_args(["up"]).fidelity == "off"
    assert local.cli.parser().parse_args(["chaos"]).fidelity is None  # the suite's own


# ---- numbers and sizes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("1" * 38, None),
        ("1" * 39, "more than 38 significant digits"),
        ("-0.000" + "7" * 39, "more than 38 significant digits"),
        ("1" + "0" * 100, None),  # one significant digit, 1E+100
        ("0000012.5000", None),
        ("1E+125", None),
        ("1E+126", "Number overflow"),
        ("1E-130", None),
        ("1E-131", "Number underflow"),
        ("0", None),
        ("not a number", None),  # moto's to refuse
    ],
)
def test_numbers_follow_dynamodbs_38_digits_and_range(text: str, refused: str | None) -> None:
    problem = number_problem(text)
    assert (problem is None) if refused is None else (refused in problem)


def test_every_number_is_found_nested_sets_included() -> None:
    value = {"M": {"a": {"N": "1"}, "b": {"L": [{"NS": ["2", "3"]}, {"S": "4"}, {"N": "5"}]}}}
    assert list(numbers_in(value)) == ["1", "2", "3", "5"]


def test_sizes_follow_dynamodbs_rules() -> None:
    assert attribute_size({"S": "é"}) == 2  # bytes, not characters
    assert attribute_size({"N": "12345"}) == 4  # 5 significant digits: 3 bytes + 1
    assert attribute_size({"N": "1000"}) == 2
    assert attribute_size({"B": b"\x00\x01\x02"}) == 3
    assert attribute_size({"B": "AAEC"}) == 3  # base64, as moto answers it
    assert attribute_size({"BOOL": True}) == attribute_size({"NULL": True}) == 1
    assert attribute_size({"L": [{"S": "ab"}, {"N": "1"}]}) == 3 + (1 + 2) + (1 + 2)
    assert attribute_size({"M": {"k": {"S": "v"}}}) == 3 + 1 + 1 + 1
    assert item_size({"name": {"S": "x" * 10}, "ñ": {"BOOL": False}}) == 4 + 10 + 2 + 1


def test_a_write_over_the_limits_is_refused_and_named() -> None:
    limits = options()
    big = {"pk": {"S": "k"}, "blob": {"S": "x" * (400 * 1024 - 7)}}  # 400 KiB exactly
    assert validation_problem([WriteAction("put", "t", {}, big)], limits) is None
    big["blob"] = {"S": "x" * (400 * 1024 - 6)}
    assert validation_problem([WriteAction("put", "t", {}, big)], limits) == (
        "item_too_large",
        "Item size has exceeded the maximum allowed size",
    )
    update = WriteAction("update", "t", {"pk": {"S": "k"}}, None, ({"N": "9" * 39},))
    name, message = validation_problem([update], limits)
    assert name == "number_too_large" and "38 significant digits" in message


def test_sns_counts_bytes_of_message_subject_and_attributes() -> None:
    assert sns_message_bytes("é" * 10, None, {}) == 20
    attributes = {"notify": {"DataType": "String", "StringValue": "ö@x"}}
    assert sns_message_bytes("m", "sub", attributes) == 1 + 3 + 6 + 6 + 4
    binary = {"raw": {"DataType": "Binary", "BinaryValue": b"\x00" * 5}}
    assert sns_message_bytes("", "", binary) == 3 + 6 + 5
    profile = Fidelity(options())
    assert not profile.sns_too_large("x" * 262_144, None, {})
    assert profile.sns_too_large("é" * 131_073, None, {})  # 131,073 characters, 262,146 bytes
    assert profile.sns_too_large("x" * 262_100, "s" * 30, attributes)  # 262,146 in all
    assert profile.ledger.sns_too_large == 2


# ---- requests as the rules see them ---------------------------------------------------------


def schema(table: str) -> tuple[str, ...]:
    return {"missions": ("mission_id",), "transactions": ("mission_id", "index")}[table]


def test_each_write_names_the_items_it_touches() -> None:
    put = {"TableName": "missions", "Item": {"mission_id": {"S": "m"}, "n": {"N": "1"}}}
    [action] = write_actions("PutItem", put, schema)
    assert action.kind == "put" and action.key == {"mission_id": {"S": "m"}}
    transact = {
        "TransactItems": [
            {"ConditionCheck": {"TableName": "missions", "Key": {"mission_id": {"S": "m"}}}},
            {
                "Update": {
                    "TableName": "transactions",
                    "Key": {"mission_id": {"S": "m"}, "index": {"N": "3"}},
                    "ExpressionAttributeValues": {":one": {"N": "1"}},
                }
            },
        ]
    }
    check, update = write_actions("TransactWriteItems", transact, schema)
    assert (check.kind, update.kind) == ("check", "update")
    assert update.values == ({"S": "m"}, {"N": "3"}, {"N": "1"})
    batch = {
        "RequestItems": {
            "transactions": [
                {"PutRequest": {"Item": {"mission_id": {"S": "m"}, "index": {"N": "0"}}}},
                {"DeleteRequest": {"Key": {"mission_id": {"S": "m"}, "index": {"N": "1"}}}},
            ]
        }
    }
    assert [a.kind for a in write_actions("BatchWriteItem", batch, schema)] == ["put", "delete"]


def test_a_binary_key_has_one_spelling_in_requests_and_answers() -> None:
    request = WriteAction("put", "t", {"k": {"B": b"\x00\xff"}})
    assert request.item_key == ("t", fidelity.canonical_key({"k": {"B": "AP8="}}))


def test_a_caller_is_its_connection_in_server_mode_and_its_thread_in_process() -> None:
    class Request:
        from_wsgi_server = True
        environ = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": 50123}

    class Handler:
        normalized_request = Request()

    assert caller_of(Handler()) == ("connection", "127.0.0.1", "50123")
    Request.from_wsgi_server = False
    assert caller_of(Handler())[0] == "thread"


# ---- traffic: hot items, in-flight windows, GSI lag ----------------------------------------


def test_a_hot_item_is_throttled_above_its_rate_in_a_sliding_window() -> None:
    traffic = ItemTraffic(options(hot_item_writes_per_second=10, hot_item_window_seconds=1.0))
    for i in range(10):
        assert not traffic.throttled(KEY, 1, now=i * 0.05)
        traffic.consume(KEY, 1, now=i * 0.05)
    assert traffic.throttled(KEY, 1, now=0.5)  # the 11th within a second
    assert not traffic.throttled(("missions", "other"), 1, now=0.5)  # per item
    assert not traffic.throttled(KEY, 1, now=1.01)  # the first write left the window
    assert traffic.throttled(KEY, 2, now=1.01)  # a transactional write costs two units


def test_no_limit_no_throttle() -> None:
    traffic = ItemTraffic(options(hot_item_writes_per_second=0))
    traffic.consume(KEY, 10**6, now=0.0)
    assert not traffic.throttled(KEY, 1, now=0.0)


def test_a_write_is_in_flight_for_the_window_and_only_for_other_callers() -> None:
    traffic = ItemTraffic(options(conflict_window_seconds=0.02))
    traffic.touch(KEY, A, now=10.0, transactional=False)
    assert traffic.in_flight(KEY, B, now=10.01, transactions_only=False)
    assert not traffic.in_flight(KEY, A, now=10.01, transactions_only=False)  # its own
    assert not traffic.in_flight(KEY, B, now=10.01, transactions_only=True)  # a plain write
    assert not traffic.in_flight(KEY, B, now=10.03, transactions_only=False)  # over
    traffic.touch(KEY, A, now=20.0, transactional=True)
    assert traffic.in_flight(KEY, B, now=20.005, transactions_only=True)


def test_a_gsi_hides_an_item_for_the_lag_after_it_takes_a_new_place() -> None:
    traffic = ItemTraffic(options(gsi_lag_seconds=1.0))
    assert not traffic.hidden(KEY, "care-index", now=0.0)
    traffic.entered(KEY, "care-index", now=5.0)
    assert traffic.hidden(KEY, "care-index", now=5.9)
    assert not traffic.hidden(KEY, "created-index", now=5.9)  # per index
    assert not traffic.hidden(KEY, "care-index", now=6.0)
    traffic.entered(KEY, "care-index", now=6.5)  # moved again: hidden again
    assert traffic.hidden(KEY, "care-index", now=7.0)


def test_an_item_takes_a_new_place_when_added_to_a_sparse_index_or_moved_in_it() -> None:
    indexes = {"retry": ("mission_id", "retry_rank"), "by-status": ("status",)}
    pending = {"mission_id": {"S": "m"}, "status": {"S": "PENDING"}}
    assert fidelity.index_places(None, indexes) == {}
    before = fidelity.index_places(pending, indexes)
    assert set(before) == {"by-status"}  # no retry_rank: not in the sparse index
    retried = {**pending, "retry_rank": {"N": "17"}}
    assert fidelity.entered_indexes(before, fidelity.index_places(retried, indexes)) == {"retry"}
    running = {**pending, "status": {"S": "RUNNING"}}
    assert fidelity.entered_indexes(before, fidelity.index_places(running, indexes)) == {
        "by-status"
    }
    touched = {**pending, "heartbeat": {"N": "5"}}  # its index keys unchanged: still shown
    assert fidelity.entered_indexes(before, fidelity.index_places(touched, indexes)) == set()


def test_forgetting_old_traffic_keeps_the_decisions() -> None:
    traffic = ItemTraffic(options(gsi_lag_seconds=1.0))
    traffic.PRUNE_EVERY = 10
    for i in range(100):
        traffic.entered(("t", str(i)), "i", now=float(i))
    assert len(traffic._written) < 20
    assert traffic.hidden(("t", "99"), "i", now=99.5)
    assert not traffic.hidden(("t", "1"), "i", now=99.5)


# ---- the profile's answers -----------------------------------------------------------------


def update(key: str = "m-1") -> WriteAction:
    return WriteAction("update", "missions", {"mission_id": {"S": key}})


def test_a_plain_write_on_an_item_a_transaction_holds_gets_transaction_conflict() -> None:
    profile = Fidelity(options(conflict_window_seconds=0.05))
    profile.executed("TransactWriteItems", [update()], A, now=1.0)
    answer = profile.admit("UpdateItem", [update()], B, now=1.01)
    assert body(answer)["__type"].endswith("#TransactionConflictException")
    assert profile.admit("UpdateItem", [update()], A, now=1.01) is None  # its own transaction
    assert profile.admit("UpdateItem", [update()], B, now=1.06) is None  # committed by now
    assert profile.ledger.write_conflicts == 1


def test_a_transaction_meeting_any_recent_write_is_cancelled_at_that_item() -> None:
    profile = Fidelity(options(conflict_window_seconds=0.05))
    profile.executed("UpdateItem", [update("m-2")], A, now=1.0)  # refused or not
    actions = [update("m-1"), update("m-2"), WriteAction("check", "missions", {"x": {"S": "y"}})]
    cancelled = body(profile.admit("TransactWriteItems", actions, B, now=1.02))
    assert cancelled["__type"].endswith("#TransactionCanceledException")
    assert [r["Code"] for r in cancelled["CancellationReasons"]] == [
        "None",
        "TransactionConflict",
        "None",
    ]
    assert "[None, TransactionConflict, None]" in cancelled["Message"]
    assert profile.ledger.transaction_conflicts == 1


def test_a_hot_item_answers_throughput_exceeded_and_in_a_transaction_a_throttling_reason() -> None:
    profile = Fidelity(options(hot_item_writes_per_second=3, conflict_window_seconds=0))
    for t in (0.0, 0.1, 0.2):
        assert profile.admit("UpdateItem", [update()], A, now=t) is None
        profile.executed("UpdateItem", [update()], A, now=t)
    plain = body(profile.admit("UpdateItem", [update()], A, now=0.3))
    assert plain["__type"].endswith("#ProvisionedThroughputExceededException")
    transact = body(profile.admit("TransactWriteItems", [update("m-9"), update()], A, now=0.3))
    assert [r["Code"] for r in transact["CancellationReasons"]] == ["None", "ThrottlingError"]
    assert profile.ledger.throttles == 2
    # A refused write consumed nothing: the window empties on time.
    assert profile.admit("UpdateItem", [update()], A, now=1.05) is None


def test_batch_writes_are_counted_but_never_refused_for_traffic() -> None:
    profile = Fidelity(options(hot_item_writes_per_second=1))
    profile.executed("TransactWriteItems", [update()], A, now=0.0)
    assert profile.admit("BatchWriteItem", [WriteAction("put", "missions", {})], B, 0.0) is None


def test_latency_is_drawn_per_service_within_its_range_scaled_and_seeded() -> None:
    profile = Fidelity(options(latency_scale=0.5))
    draws = [profile.latency("s3") for _ in range(200)]
    assert all(0.0075 <= d <= 0.025 for d in draws)
    assert profile.latency("ec2") == 0.0
    again = Fidelity(options(latency_scale=0.5))
    assert [again.latency("s3") for _ in range(200)] == draws


def test_delay_sleeps_and_counts() -> None:
    slept: list[float] = []
    profile = Fidelity(options(latency_seconds={"dynamodb": (0.01, 0.01)}), sleep=slept.append)
    profile.delay("dynamodb")
    profile.delay("sqs")
    assert slept == [0.01]
    assert profile.ledger.calls_delayed == 1 and math.isclose(profile.ledger.seconds_delayed, 0.01)


def test_fleet_rationing_follows_its_rates() -> None:
    profile = Fidelity(options(insufficient_capacity_rate=0.1, fleet_shortfall_rate=0.3))
    fates = Counter()
    for _ in range(2000):
        granted, fault = profile.fleet_grant(5)
        fates[fault] += 1
        if fault == "insufficient_capacity":
            assert granted == 0
        elif fault == "fleet_shortfalls":
            assert 1 <= granted <= 4
        else:
            assert granted == 5
    assert 0.07 < fates["insufficient_capacity"] / 2000 < 0.13
    assert 0.26 < fates["fleet_shortfalls"] / 2000 < 0.34
    assert Fidelity(options(insufficient_capacity_rate=0, fleet_shortfall_rate=0)).fleet_grant(
        3
    ) == (3, None)
    assert Fidelity(options(fleet_shortfall_rate=0.95)).fleet_grant(0) == (0, None)


def test_fleet_errors_name_each_pool_as_aws_does() -> None:
    configs = [
        {
            "LaunchTemplateSpecification": {"LaunchTemplateName": "lt", "Version": "$Latest"},
            "Overrides": [{"InstanceType": "c5.large"}, {"InstanceType": "m5.large"}],
        }
    ]
    errors = fidelity.fleet_errors(configs, "spot")
    assert [e["ErrorCode"] for e in errors] == ["InsufficientInstanceCapacity"] * 2
    assert [e["LaunchTemplateAndOverrides"]["Overrides"]["InstanceType"] for e in errors] == [
        "c5.large",
        "m5.large",
    ]
    assert {e["Lifecycle"] for e in errors} == {"spot"}
    on_demand = fidelity.fleet_errors(configs, "on-demand")[0]
    assert on_demand["Lifecycle"] == "on-demand" and "c5.large" in on_demand["ErrorMessage"]


# ---- the ledger, install and the chaos suite's report --------------------------------------


def test_install_wraps_moto_once_and_uninstall_restores_it() -> None:
    from moto.core.responses import BaseResponse
    from moto.ec2.responses import EC2Response
    from moto.sns.responses import SNSResponse

    from local import moto_patches

    before = (BaseResponse.setup_class, SNSResponse.publish, moto_patches._hook)
    assert "create_fleet" not in vars(EC2Response)
    first = fidelity.install(options())
    wrapped = BaseResponse.setup_class
    second = fidelity.install(options(seed=2))
    assert BaseResponse.setup_class is wrapped  # not wrapped twice
    assert fidelity.active() is second is not first
    fidelity.uninstall()
    fidelity.uninstall()  # idempotent
    assert (BaseResponse.setup_class, SNSResponse.publish, moto_patches._hook) == before
    assert "create_fleet" not in vars(EC2Response) and fidelity.active() is None


def test_installed_restores_the_profile_it_found() -> None:
    with fidelity.installed(options()) as outer:
        with fidelity.installed(options(seed=3)) as inner:
            assert fidelity.active() is inner
        assert fidelity.active() is outer
        with fidelity.installed(None) as none:
            assert none is None and fidelity.active() is outer
    assert fidelity.active() is None


def test_the_ledger_has_plain_names_and_a_summary() -> None:
    profile = Fidelity(options())
    profile.ledger.add(throttles=2, seconds_delayed=0.123)
    counts = profile.ledger.as_dict()
    assert set(counts) == {
        "calls_delayed",
        "seconds_delayed",
        "throttles",
        "transaction_conflicts",
        "write_conflicts",
        "gsi_lag_hides",
        "number_too_large",
        "item_too_large",
        "sns_too_large",
        "fleet_shortfalls",
        "insufficient_capacity",
    }
    assert counts["throttles"] == 2 and counts["seconds_delayed"] == 0.1
    assert "throttles 2" in profile.ledger.summary()


def test_the_chaos_suite_owes_conflicts_throttles_and_gsi_lag() -> None:
    ledger = {"throttles": 0, "transaction_conflicts": 0, "write_conflicts": 3, "gsi_lag_hides": 1}
    assert idle_faults(CHAOS_FIDELITY, ledger) == ["throttles"]
    off = options(hot_item_writes_per_second=0, conflict_window_seconds=0, gsi_lag_seconds=0)
    assert idle_faults(off, {}) == []


def test_the_chaos_table_shows_what_was_injected() -> None:
    row = {
        "missions": 1,
        "transactions": 2,
        "workers_killed": 0,
        "notices_sent": 0,
        "duplicate_events": 0,
        "handler_crashes": 0,
        "handlers_not_crashed": [],
        "lost": 0,
        "run_twice": 0,
        "stale_outcomes_counted": 0,
        "concurrent_double_runs": 0,
        "emails_per_mission": [1],
        "results_equal": "1/1",
        "seconds": 1.0,
        "injected.transaction_conflicts": 4,
        "injected.seconds_delayed": 1.5,
        "faults_not_injected": [],
    }
    text = table(row)
    assert "injected by the AWS-fidelity profile" in text
    assert "transaction conflicts" in text and "| 4 " in text and "1.5" in text
