"""The budget guard (`budget_usd`): once a mission's estimated cost reaches it, the sweeper fails
the mission saying so; claims stop, its instances are terminated, what it counted stays counted,
its parts stay, and one email goes out."""

from __future__ import annotations

import dataclasses
import json
import time

from chalicelib import sweeper
from chalicelib.context import get_context
from chalicelib.layout import part_key
from local.inprocess import InProcessCluster
from tests.functional.test_mission import kmer_config
from tests.functional.test_reliability import claim, mission, start


def later(seconds: float):
    return dataclasses.replace(get_context(), clock=lambda: time.time() + seconds)


def test_a_budget_reached_mid_mission_stops_it_and_keeps_what_was_done(
    cluster: InProcessCluster,
):
    mission_id = start(cluster, kmer_config("capped", "capped.fa", count=6, budget_usd=0.05))
    bucket = cluster.stack.outputs["ResultBucketName"]
    done = [claim(mission_id, f"i-a/{slot}", time.time(), 300) for slot in (0, 1)]
    for t in done:
        key = part_key(mission_id, t.index, t.claim, t.span)
        cluster.s3.put_object(Bucket=bucket, Key=key, Body=b"part\n")
    cluster.deliver_result_events()
    assert mission(cluster, mission_id)["transactions"]["SUCCEEDED"] == 2

    assert sweeper.sweep(get_context()).over_budget == []  # seconds old: cents under budget
    # An hour on: 3 Spot instances have cost more than 5 cents.
    report = sweeper.sweep(later(3600))
    assert report.over_budget == [mission_id]
    failed = mission(cluster, mission_id)
    assert failed["status"] == "FAILED"
    assert failed["error"].startswith("budget exhausted: $") and failed["error"].endswith(
        " of $0.05"
    ), failed["error"]
    assert failed["transactions"]["SUCCEEDED"] == 2  # what was done stays counted
    assert claim(mission_id, "i-b/0", time.time(), 300) is None  # claims stopped
    assert set(cluster.instance_states(mission_id).values()) == {"terminated"}
    for t in done:  # the parts stay
        cluster.s3.head_object(Bucket=bucket, Key=part_key(mission_id, t.index, t.claim, t.span))
    emails = cluster.emails()
    assert [e.subject for e in emails] == ["lighthpc: capped FAILED"]
    assert failed["error"] in emails[0].body
    assert sweeper.sweep(later(3700)).over_budget == []  # once
    assert cluster.emails() == []
    assert json.loads(cluster.get(f"/missions/{mission_id}").body)["estimated_cost_usd"] > 0.05
