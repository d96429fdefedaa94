"""Pipelines (POST /pipelines): stages that feed each other, stored all or none, watched and
mailed as one; their mistakes are 400s naming the field, with nothing written."""

from __future__ import annotations

import json

import boto3

from chalicelib.context import get_context
from local.inprocess import InProcessCluster
from tests.functional.test_mission import SAMPLE, kmer_config, single_process_result
from worker_ami.apps.kmer_top import top


def stage(name: str, config: dict) -> dict:
    config = {k: v for k, v in config.items() if k != "notify"}
    return {"stage": name, "config": {**config, "name": name}}


def rank_config() -> dict:
    return kmer_config(
        "rank",
        "unused",
        input={"stage": "match"},
        split={"mode": "count", "count": 1, "interval": {"start": 0, "end": 1}},
        app={"builtin": "kmer-top", "params": {"top": 4}},
        instances={"types": ["r6i.large"], "max_instances": 1, "slots": 1},
    )


def two_stages(**overrides) -> dict:
    body = {
        "name": "match then rank",
        "notify": "owner@example.org",
        "stages": [
            stage("match", kmer_config("match", "samples/p.fa")),
            stage("rank", rank_config()),
        ],
    }
    return {**body, **overrides}


def pipeline(cluster: InProcessCluster, pipeline_id: str) -> dict:
    response = cluster.get(f"/pipelines/{pipeline_id}")
    assert response.status_code == 200, response.body
    return json.loads(response.body)


def test_two_stages_run_one_after_the_other_and_send_one_email(cluster: InProcessCluster):
    response = cluster.submit(two_stages(budget_usd=100), path="/pipelines")
    assert response.status_code == 201, response.body
    created = json.loads(response.body)
    pipeline_id = created["pipeline_id"]
    match, rank = (s["mission_id"] for s in created["stages"])
    assert match == "m-" + pipeline_id.removeprefix("p-")
    assert created["stages"][0]["upload"]["key"] == "samples/p.fa"
    assert created["stages"][1]["upload"] is None
    cluster.deliver_source_events()
    assert pipeline(cluster, pipeline_id)["status"] == "AWAITING_INPUT"

    cluster.upload("samples/p.fa", SAMPLE)
    cluster.deliver_source_events()
    cluster.run_workers(match)
    cluster.deliver_result_events()
    midway = pipeline(cluster, pipeline_id)
    assert midway["status"] == "RUNNING"
    assert [s["status"] for s in midway["stages"]] == ["SUCCEEDED", "AWAITING_INPUT"]
    assert cluster.emails() == []  # one email, at the end

    cluster.deliver_source_events()  # the match stage's end starts the rank stage
    types = {i["InstanceType"] for i in cluster.instances(rank)}
    assert types == {"r6i.large"}  # the stage's own machines
    cluster.run_workers(rank)
    cluster.deliver_result_events()
    done = pipeline(cluster, pipeline_id)
    assert done["status"] == "SUCCEEDED", done
    assert [s["status"] for s in done["stages"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert done["stages"][1]["input_mission"] == match
    expected = "".join(top(single_process_result().decode().splitlines(True), 4)).encode()
    assert cluster.result(done["stages"][1]["result"]) == expected
    emails = cluster.emails()
    assert [e.subject for e in emails] == ["lighthpc pipeline: match then rank SUCCEEDED"]
    body = emails[0].body
    assert f"Stage 'match' ({match}): SUCCEEDED" in body
    assert f"Stage 'rank' ({rank}): SUCCEEDED" in body
    assert emails[0].attributes["notify"] == "owner@example.org"
    assert pipeline(cluster, pipeline_id)["notified_at"] is not None
    stages = [json.loads(cluster.get(f"/missions/{m}").body) for m in (match, rank)]
    assert all(s["notified_at"] and s["pipeline"] == pipeline_id for s in stages)


def test_a_failed_stage_fails_the_stages_it_feeds_in_one_email(cluster: InProcessCluster):
    doomed = kmer_config(
        "match",
        "samples/d.fa",
        app={"argv": ["{python}", "-c", "import sys; sys.exit(3)"]},
        max_attempts=1,
    )
    body = two_stages(stages=[stage("match", doomed), stage("rank", rank_config())])
    created = json.loads(cluster.submit(body, path="/pipelines").body)
    match = created["stages"][0]["mission_id"]
    cluster.upload("samples/d.fa", SAMPLE)
    cluster.deliver_source_events()
    cluster.run_workers(match)
    cluster.deliver_result_events()
    cluster.deliver_source_events()
    done = pipeline(cluster, created["pipeline_id"])
    assert done["status"] == "FAILED"
    assert done["stages"][1]["error"].startswith(f"its upstream mission {match} failed")
    emails = cluster.emails()
    assert [e.subject for e in emails] == ["lighthpc pipeline: match then rank FAILED"]
    assert "exit code 3" in emails[0].body


def test_cancel_a_pipeline_cancels_every_stage_once(cluster: InProcessCluster):
    created = json.loads(cluster.submit(two_stages(), path="/pipelines").body)
    pipeline_id = created["pipeline_id"]
    cluster.upload("samples/p.fa", SAMPLE)
    cluster.deliver_source_events()
    response = cluster.api.http.delete(f"/pipelines/{pipeline_id}")
    assert response.status_code == 200, response.body
    cluster.deliver_source_events()
    done = pipeline(cluster, pipeline_id)
    assert done["status"] == "CANCELLED", done
    assert {s["status"] for s in done["stages"]} == {"CANCELLED"}
    assert cluster.api.http.delete(f"/pipelines/{pipeline_id}").status_code == 409
    assert [e.subject for e in cluster.emails()] == ["lighthpc pipeline: match then rank CANCELLED"]


def _fields(response) -> list[str]:
    assert response.status_code == 400, response.body
    return [f["field"] for f in json.loads(response.body)["fields"]]


def _missions_stored() -> int:
    table = get_context().settings.mission_table
    return boto3.client("dynamodb").scan(TableName=table, Select="COUNT")["Count"]


def test_bad_pipelines_are_400s_naming_the_field_and_write_nothing(cluster: InProcessCluster):
    match = stage("match", kmer_config("match", "samples/x.fa"))
    looped = stage("rank", {**rank_config(), "input": {"stage": "rank"}})
    cases = {
        "stages.1.config.input.stage": two_stages(stages=[match, looped]),
        "stages.1.stage": two_stages(stages=[match, {**match, "config": match["config"]}]),
        "stages.0.config.notify": two_stages(
            stages=[{**match, "config": {**match["config"], "notify": "a@b.org"}}]
        ),
    }
    twice = stage("again", kmer_config("again", "samples/x.fa"))
    cases["stages.1.config.input"] = two_stages(stages=[match, twice])
    missing = stage("rank", {**rank_config(), "input": {"stage": "nowhere"}})
    cases["stages.1.config.input.stage "] = two_stages(stages=[match, missing])
    upstream = {"mission": "m-20260101000000-00000000"}
    cases["stages.1.config.input.mission"] = two_stages(
        stages=[match, stage("rank", {**rank_config(), "input": upstream})]
    )
    for field, body in cases.items():
        assert field.strip() in _fields(cluster.submit(body, path="/pipelines")), field
    assert _missions_stored() == 0
    # A stage reference outside a pipeline.
    assert _fields(cluster.submit(rank_config())) == ["input.stage"]
    assert cluster.get("/pipelines/p-20260101000000-00000000").status_code == 404
    assert cluster.get("/pipelines/nonsense").status_code == 404
