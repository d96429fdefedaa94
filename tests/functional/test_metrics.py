"""Metrics: the handlers publish CloudWatch EMF lines on stdout, flushed after every invocation
by app.py's `publish_metrics` middleware (Powertools `Metrics.flush_metrics` prints them)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest

from chalicelib.observability import SERVICE, metrics
from local.inprocess import InProcessCluster
from tests.functional.test_mission import SAMPLE, kmer_config, run_to_completion, submit


@pytest.fixture
def emf(cluster: InProcessCluster, monkeypatch, capsys):
    """Metrics enabled, nothing left over from earlier tests (Powertools keeps the metric set at
    class level, and calls outside a handler, e.g. `sweep(ctx)` in a test, never flush it)."""
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    monkeypatch.delenv("POWERTOOLS_DEV", raising=False)
    metrics.clear_metrics()
    capsys.readouterr()
    yield lambda: emf_lines(capsys.readouterr().out)
    metrics.clear_metrics()


def emf_lines(stdout: str) -> list[dict[str, Any]]:
    """The EMF documents among the lines on stdout (log lines may be there too)."""
    found = []
    for line in stdout.splitlines():
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if isinstance(document, dict) and "_aws" in document:
            found.append(document)
    return found


def metric_names(document: dict[str, Any]) -> set[str]:
    return {
        m["Name"]
        for directive in document["_aws"]["CloudWatchMetrics"]
        for m in directive["Metrics"]
    }


def totals(documents: list[dict[str, Any]]) -> dict[str, float]:
    summed: dict[str, float] = defaultdict(float)
    for document in documents:
        for name in metric_names(document):
            value = document[name]
            summed[name] += sum(value) if isinstance(value, list) else value
    return dict(summed)


def assert_lighthpc(document: dict[str, Any]) -> None:
    [directive] = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "lighthpc"
    assert directive["Dimensions"] == [["service"]] and document["service"] == SERVICE
    assert isinstance(document["_aws"]["Timestamp"], int)


def sweeper_event(cluster: InProcessCluster) -> dict[str, Any]:
    return cluster.api.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
    )


def test_a_sweep_through_the_handler_prints_one_emf_line(cluster: InProcessCluster, emf):
    response = cluster.api.lambda_.invoke("sweeper", sweeper_event(cluster))
    assert response.payload["requeued"] == 0
    [document] = emf()
    assert_lighthpc(document)
    assert "Sweeps" in metric_names(document)
    assert totals([document])["Sweeps"] == 1
    units = {m["Name"]: m["Unit"] for m in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units["Sweeps"] == "Count"
    assert not metrics.metric_set  # flushed, not carried into the next invocation

    cluster.api.lambda_.invoke("sweeper", sweeper_event(cluster))
    [again] = emf()  # one line per invocation, counting that invocation only
    assert totals([again])["Sweeps"] == 1


def test_metrics_disabled_prints_nothing(cluster: InProcessCluster, emf, monkeypatch):
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    cluster.api.lambda_.invoke("sweeper", sweeper_event(cluster))
    assert emf() == []


def test_a_mission_run_emits_its_metrics(cluster: InProcessCluster, emf):
    mission_id = submit(cluster, kmer_config("metered", "metered.fa", count=4))
    cluster.upload("metered.fa", SAMPLE)
    cluster.deliver_source_events()
    launched = emf()
    assert totals(launched) == {"InstancesLaunched": 2}  # 4 transactions, 2 slots each

    done = run_to_completion(cluster, mission_id, times=2)  # every result event twice
    assert done["status"] == "SUCCEEDED"
    documents = emf()
    assert documents
    for document in documents:
        assert_lighthpc(document)
    summed = totals(documents)
    assert summed["TransactionsSucceeded"] == 4  # counted once each, though delivered twice
    assert summed["EmailsSent"] == 1
    assert "TransactionsFailed" not in summed and "TransactionsRetried" not in summed
    assert "MergeSeconds" in summed
    assert not metrics.metric_set


def test_metrics_disabled_stay_silent_over_many_invocations(
    cluster: InProcessCluster, emf, monkeypatch
):
    """A warm Lambda with metrics disabled: each invocation's values must be dropped at the
    flush. Powertools' flush neither prints nor clears them when disabled, and `add_metric`
    prints the set (disabled or not) once a metric holds 100 values: the 100th sweep would
    publish 100 sweeps."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    for _ in range(100):
        cluster.api.lambda_.invoke("sweeper", sweeper_event(cluster))
    printed = emf()
    assert [totals([d]) for d in printed] == []
    assert not metrics.metric_set  # nothing carried into the next invocation


def test_log_lines_carry_the_lambda_context(cluster: InProcessCluster):
    """app.py's ConvertToMiddleware(logger.inject_lambda_context): request id and cold start."""
    import io

    from chalicelib.observability import logger

    level, out = logger.log_level, io.StringIO()
    stream = logger.registered_handler.setStream(out)  # the handler keeps the stdout of import
    logger.setLevel("INFO")
    try:
        submit(cluster, kmer_config("logged", "logged.fa", count=2))
    finally:
        logger.setLevel(level)
        logger.registered_handler.setStream(stream)
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line]
    [registered] = [line for line in lines if line.get("message") == "mission registered"]
    assert registered["function_name"] == "api_handler"
    assert registered["function_request_id"]
    assert isinstance(registered["cold_start"], bool)
    assert registered["correlation_id"] == registered["mission_id"]
