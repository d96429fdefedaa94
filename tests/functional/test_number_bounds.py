"""Interval bounds through the API: beyond 64 bits a 400 naming the field (never a 5xx, never a
mission that fails at claim time); at the extremes a mission runs and every slice is exact."""

from __future__ import annotations

import itertools
import json

import pytest

from local.inprocess import InProcessCluster
from tests.functional.test_bad_input import nothing_written
from tests.functional.test_mission import kmer_config, submit

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Writes "start end" of its slice, parsed as integers: what an app does with {start}/{end}.
ECHO = [
    "{python}",
    "-c",
    "import sys; open(sys.argv[1], 'w').write('%d %d\\n' % (int(sys.argv[2]), int(sys.argv[3])))",
    "{output}",
    "{start}",
    "{end}",
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    with InProcessCluster.running(workdir=tmp_path_factory.mktemp("bounds")) as cluster:
        cluster.deliver_source_events()  # S3's s3:TestEvent, so the queue starts empty
        yield cluster


def interval_config(start: int, end: int, count: int = 4) -> dict:
    split = {"mode": "count", "count": count, "interval": {"start": start, "end": end}}
    return kmer_config("bounds", "bounds/in.txt", split=split, app={"argv": ECHO})


def post_raw(cluster: InProcessCluster, body: str):
    return cluster.api.http.post(
        "/missions", headers={"Content-Type": "application/json"}, body=body.encode()
    )


def refused(cluster: InProcessCluster, response, field: str) -> None:
    assert response.status_code == 400, response.body
    answer = json.loads(response.body)
    assert answer["error"] == "invalid mission config"
    assert field in [f["field"] for f in answer["fields"]], answer
    nothing_written(cluster)


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        (0, 10**38, "split.interval.end"),  # 39 digits: beyond DynamoDB's precision
        (0, 10**40, "split.interval.end"),
        (-(10**40), 0, "split.interval.start"),
        (0, INT64_MAX + 1, "split.interval.end"),
        (INT64_MIN - 1, 0, "split.interval.start"),
    ],
)
def test_bounds_beyond_64_bits_are_a_400(shared: InProcessCluster, start: int, end: int, field):
    refused(shared, shared.submit(interval_config(start, end)), field)


def test_a_5000_digit_bound_is_a_400_not_a_500(shared: InProcessCluster):
    body = json.dumps(interval_config(0, 1)).replace('"end": 1', '"end": ' + "9" * 5000)
    refused(shared, post_raw(shared, body), "split.interval.end")


def test_a_mission_at_the_64_bit_extremes_runs_with_exact_slices(shared: InProcessCluster):
    mission_id = submit(shared, interval_config(INT64_MIN, INT64_MAX, count=3))
    shared.upload("bounds/in.txt", b"anything\n")
    shared.deliver_source_events()
    shared.run_workers(mission_id)
    shared.deliver_result_events()
    mission = json.loads(shared.get(f"/missions/{mission_id}").body)
    assert mission["status"] == "SUCCEEDED", mission
    rows = json.loads(shared.get(f"/missions/{mission_id}/transactions").body)["transactions"]
    slices = [(t["start"], t["end"]) for t in rows]
    assert slices[0][0] == INT64_MIN and slices[-1][1] == INT64_MAX
    assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))
    merged = shared.result(mission["result"]).decode().splitlines()
    assert merged == [f"{s} {e}" for s, e in slices]
