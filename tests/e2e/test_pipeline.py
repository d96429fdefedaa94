"""End to end: a two-stage pipeline (POST /pipelines) on `lighthpc up`, through HTTP and S3."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from local.client import RuntimeInfo, api, read_info, s3_client, watch_pipeline
from local.demo import RANK_TOP, demo_input, expected_top, pipeline_config
from tests.e2e.test_local_stack import stack  # noqa: F401 - the module's own `lighthpc up`

REFERENCES = 160


@pytest.fixture(scope="module")
def info(stack) -> RuntimeInfo:  # noqa: F811 - the fixture imported above
    found = read_info(stack["home"])
    assert found is not None
    return found


def the_one_email(info: RuntimeInfo, pipeline_id: str, timeout: float = 30) -> str:
    """The pipeline's email, checking that no second one and no per-stage one came."""
    deadline = time.monotonic() + timeout
    while not (found := list(Path(info.outbox).glob(f"*-{pipeline_id}.eml"))):
        if time.monotonic() > deadline:
            pytest.fail(f"no email for pipeline {pipeline_id}")
        time.sleep(0.3)
    time.sleep(1.0)  # a duplicate would land right after: give it the chance
    found = list(Path(info.outbox).glob(f"*-{pipeline_id}.eml"))
    assert len(found) == 1, found
    return found[0].read_text()


def submit(info: RuntimeInfo, config: dict) -> dict:
    status, body = api(info, "POST", "/pipelines", config)
    assert status == 201, body
    assert [s["stage"] for s in body["stages"]] == [s["stage"] for s in config["stages"]]
    return body


def no_stage_emails(info: RuntimeInfo, pipeline: dict) -> None:
    for stage in pipeline["stages"]:
        assert not list(Path(info.outbox).glob(f"*-{stage['mission_id']}*.eml")), stage


def test_match_then_rank_equals_the_single_process_run(info):
    config = pipeline_config(8, REFERENCES, workers=2, input_key="e2e/pipeline/sample.fa")
    created = submit(info, config)
    match, rank = created["stages"]
    assert match["upload"]["key"] == "e2e/pipeline/sample.fa" and rank["upload"] is None
    sample = demo_input(REFERENCES)
    s3 = s3_client(info)
    s3.put_object(Bucket=info.source_bucket, Key=match["upload"]["key"], Body=sample.encode())

    pipeline = watch_pipeline(info, created["pipeline_id"], timeout=180, out=None)

    assert pipeline["status"] == "SUCCEEDED", pipeline
    assert [s["status"] for s in pipeline["stages"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert pipeline["stages"][0]["transactions"]["SUCCEEDED"] == 8
    bucket, key = pipeline["stages"][-1]["result"].removeprefix("s3://").split("/", 1)
    final = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert final == expected_top(sample, REFERENCES)
    assert len(final.splitlines()) == RANK_TOP
    email = the_one_email(info, created["pipeline_id"])
    assert f"Subject: lighthpc pipeline: {config['name']} SUCCEEDED" in email
    assert "To: you@example.org" in email
    for stage in pipeline["stages"]:
        assert f"Stage {stage['stage']!r} ({stage['mission_id']}): SUCCEEDED" in email
    no_stage_emails(info, pipeline)


def test_a_failed_first_stage_fails_the_next_and_one_email_says_so(info):
    config = pipeline_config(2, REFERENCES, workers=1, input_key="e2e/pipeline/fails.txt")
    first = config["stages"][0]["config"]
    first["name"] = "always exits 3"
    first["split"] = {"mode": "count", "count": 2, "interval": {"start": 0, "end": 2}}
    first["app"] = {"argv": ["{python}", "-c", "import sys; sys.exit(3)"]}
    first["max_attempts"] = 1
    config["name"] = "fails at the first stage"
    created = submit(info, config)
    s3_client(info).put_object(
        Bucket=info.source_bucket, Key=created["stages"][0]["upload"]["key"], Body=b"x\n"
    )

    pipeline = watch_pipeline(info, created["pipeline_id"], timeout=180, out=None)

    assert pipeline["status"] == "FAILED", pipeline
    upstream, ranked = pipeline["stages"]
    assert (upstream["status"], ranked["status"]) == ("FAILED", "FAILED")
    assert upstream["transactions"]["FAILED"] == 2
    assert upstream["mission_id"] in ranked["error"], ranked
    assert ranked["result"] is None
    email = the_one_email(info, created["pipeline_id"])
    assert "Subject: lighthpc pipeline: fails at the first stage FAILED" in email
    assert f"Stage 'match' ({upstream['mission_id']}): FAILED" in email
    assert f"Stage 'rank' ({ranked['mission_id']}): FAILED" in email
    no_stage_emails(info, pipeline)


def test_a_mission_with_a_reduce_through_the_cli_and_verify(stack, info, tmp_path):  # noqa: F811
    """A reduce on its own worker process, the mission watched and its concatenation verified
    against its receipt; then a pipeline file through `lighthpc submit` and `watch p-...`."""
    from tests.e2e.test_local_stack import run_cli

    config = pipeline_config(6, REFERENCES, workers=2, input_key="e2e/reduce/sample.fa")
    match, rank = (s["config"] for s in config["stages"])
    mission_config = {
        **match,
        "name": "match, reduced",
        "reduce": {"app": rank["app"], "instances": rank["instances"]},
    }
    sample = tmp_path / "sample.fa"
    sample.write_text(demo_input(REFERENCES))
    path = tmp_path / "mission.json"
    path.write_text(json.dumps(mission_config))
    submitted = run_cli(stack, "submit", str(sample), "--config", str(path))
    assert submitted.returncode == 0, submitted.stderr
    mission_id = submitted.stdout.split()[1]
    watched = run_cli(stack, "watch", mission_id)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "Concatenation:" in watched.stdout
    status, mission = api(info, "GET", f"/missions/{mission_id}")
    assert status == 200 and mission["status"] == "SUCCEEDED", mission
    bucket, key = mission["result"].removeprefix("s3://").split("/", 1)
    final = s3_client(info).get_object(Bucket=bucket, Key=key)["Body"].read()
    assert final == expected_top(sample.read_text(), REFERENCES)
    verified = run_cli(stack, "verify", mission_id)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    pipeline_file = tmp_path / "pipeline.json"
    config["stages"][0]["config"]["input"] = "e2e/reduce/pipeline.fa"
    pipeline_file.write_text(json.dumps(config))
    submitted = run_cli(stack, "submit", str(sample), "--config", str(pipeline_file))
    assert submitted.returncode == 0, submitted.stderr
    pipeline_id = submitted.stdout.split()[1]
    assert pipeline_id.startswith("p-"), submitted.stdout
    watched = run_cli(stack, "watch", pipeline_id)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert f"lighthpc pipeline: {config['name']} SUCCEEDED" in watched.stdout
