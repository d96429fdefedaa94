"""The API outside the local stage: only IAM-authenticated callers, only allowed programs.

Deployed, API Gateway verifies SigV4 before Lambda runs and names the caller in
`requestContext.identity`. `chalice.test.Client` admits IAMAuthorizer routes unchecked, so these
tests show the app's own check: in stage dev a request without an IAM identity is refused on
every route; `signed_as` adds the identity API Gateway would add after verifying a signature.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import chalice.local
import pytest

from chalicelib.auth import input_prefix
from chalicelib.context import get_context
from local.inprocess import InProcessCluster
from tests.functional.test_mission import kmer_config

pytestmark = pytest.mark.filterwarnings(
    "ignore:IAMAuthorizer is not a supported in local mode:UserWarning"
)

ALICE = "arn:aws:sts::111122223333:assumed-role/lighthpc-submitter/alice"
JSON = {"Content-Type": "application/json"}


def alices(name: str) -> str:
    """A key in Alice's own folder of the source bucket: the only inputs she may bind in dev."""
    return input_prefix(ALICE) + name


@contextmanager
def signed_as(user_arn: str) -> Iterator[None]:
    """Requests carry the identity API Gateway adds once it has verified a SigV4 signature."""
    converter = chalice.local.LambdaEventConverter
    original = converter.create_lambda_event

    def create_lambda_event(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        event = original(self, *args, **kwargs)
        event["requestContext"]["identity"].update(
            {
                "accountId": user_arn.split(":")[4],
                "caller": "AROAEXAMPLEID:" + user_arn.rsplit("/", 1)[-1],
                "userArn": user_arn,
            }
        )
        return event

    converter.create_lambda_event = create_lambda_event  # type: ignore[method-assign]
    try:
        yield
    finally:
        converter.create_lambda_event = original  # type: ignore[method-assign]


def request(cluster: InProcessCluster, method: str, path: str, body: Any = None) -> Any:
    if body is None:
        return cluster.api.http.request(method, path)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return cluster.api.http.request(method, path, headers=JSON, body=data)


def call(cluster: InProcessCluster, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    response = request(cluster, method, path, body)
    return response.status_code, json.loads(response.body) if response.body else None


def stored_missions(cluster: InProcessCluster) -> list[dict[str, Any]]:
    table = get_context().settings.mission_table
    return boto3.client("dynamodb").scan(TableName=table)["Items"]


def routes(mission_id: str) -> list[tuple[str, str, Any]]:
    return [
        ("POST", "/missions", kmer_config("unsigned", "unsigned.fa")),
        ("GET", "/missions", None),
        ("GET", f"/missions/{mission_id}", None),
        ("GET", f"/missions/{mission_id}/transactions", None),
        ("DELETE", f"/missions/{mission_id}", None),
    ]


def test_dev_refuses_every_route_without_an_iam_identity(dev: InProcessCluster):
    with signed_as(ALICE):
        status, created = call(dev, "POST", "/missions", kmer_config("signed", alices("s.fa")))
    assert status == 201, created
    mission_id = created["mission_id"]
    before = stored_missions(dev)

    for method, path, body in routes(mission_id):
        response = request(dev, method, path, body)
        assert response.status_code == 401, (method, path, response.body)
        assert response.headers["WWW-Authenticate"] == "AWS4-HMAC-SHA256"
        answer = json.loads(response.body)
        assert answer["error"] == "authentication required", answer
        assert answer["stage"] == "dev"
        assert "Signature Version 4" in answer["reason"]

    # Nothing was written or cancelled by the refused calls.
    assert stored_missions(dev) == before
    with signed_as(ALICE):
        status, mission = call(dev, "GET", f"/missions/{mission_id}")
    assert status == 200 and mission["status"] == "AWAITING_INPUT"


def test_dev_admits_a_signed_caller_and_records_who_submitted(dev: InProcessCluster):
    with signed_as(ALICE):
        status, created = call(dev, "POST", "/missions", kmer_config("alice's", alices("alice.fa")))
        assert status == 201, created
        assert created["submitted_by"] == ALICE
        mission_id = created["mission_id"]

        status, mission = call(dev, "GET", f"/missions/{mission_id}")
        assert status == 200 and mission["submitted_by"] == ALICE
        status, listed = call(dev, "GET", "/missions")
        assert status == 200
        assert [(m["mission_id"], m["submitted_by"]) for m in listed["missions"]] == [
            (mission_id, ALICE)
        ]
        status, page = call(dev, "GET", f"/missions/{mission_id}/transactions")
        assert status == 200 and page == {"transactions": [], "next_after": None}
        status, cancelled = call(dev, "DELETE", f"/missions/{mission_id}")
        assert status == 200 and cancelled["status"] == "CANCELLED", cancelled
    [item] = stored_missions(dev)
    assert item["submitted_by"] == {"S": ALICE}


def test_local_stage_needs_no_identity(cluster: InProcessCluster):
    assert get_context().settings.stage == "local"
    status, created = call(cluster, "POST", "/missions", kmer_config("local", "local.fa"))
    assert status == 201, created
    assert created["submitted_by"] == "local"
    mission_id = created["mission_id"]
    for method, path, _ in routes(mission_id)[1:]:
        status, answer = call(cluster, method, path)
        assert status == 200, (method, path, answer)
    status, mission = call(cluster, "GET", f"/missions/{mission_id}")
    assert mission["submitted_by"] == "local" and mission["status"] == "CANCELLED"


def test_missions_stored_before_submitted_by_existed_still_load(cluster: InProcessCluster):
    status, created = call(cluster, "POST", "/missions", kmer_config("old", "old.fa"))
    assert status == 201, created
    key = {"mission_id": {"S": created["mission_id"]}}
    boto3.client("dynamodb").update_item(
        TableName=get_context().settings.mission_table,
        Key=key,
        UpdateExpression="REMOVE submitted_by",
    )
    status, mission = call(cluster, "GET", f"/missions/{created['mission_id']}")
    assert status == 200 and mission["submitted_by"] is None
    status, listed = call(cluster, "GET", "/missions")
    assert status == 200 and listed["missions"][0]["submitted_by"] is None


def test_dev_refuses_inline_argv_off_the_allow_list_but_runs_built_in_apps(
    dev: InProcessCluster,
):
    argv = ["/usr/bin/python3", "-c", "print('{index}')"]
    with signed_as(ALICE):
        status, answer = call(
            dev, "POST", "/missions", kmer_config("inline", alices("inline.fa"), app={"argv": argv})
        )
        assert status == 400, answer
        assert answer["error"] == "invalid mission config"
        [field] = answer["fields"]
        assert field["field"] == "app.argv"
        assert "'/usr/bin/python3' is not on this stage's allow list" in field["reason"]
        assert stored_missions(dev) == []

        status, created = call(
            dev, "POST", "/missions", kmer_config("built-in", alices("builtin.fa"))
        )
        assert status == 201, created
        assert created["submitted_by"] == ALICE


def test_inline_argv_runs_in_the_local_stage(cluster: InProcessCluster):
    argv = ["/usr/bin/python3", "-c", "print('{index}')"]
    config = kmer_config("inline", alices("inline.fa"), app={"argv": argv})
    status, created = call(cluster, "POST", "/missions", config)
    assert status == 201, created


def test_dev_limits_the_size_of_a_mission_config(dev: InProcessCluster):
    config = kmer_config("big", alices("big.fa"))
    config["name"] = "x" * 70_000  # over the 64 KiB body limit (and the name's own limit)
    with signed_as(ALICE):
        status, answer = call(dev, "POST", "/missions", json.dumps(config).encode())
    assert status == 400, answer
    [field] = answer["fields"]
    assert field["field"] == "(body)" and "the limit is 65536" in field["reason"]
    assert stored_missions(dev) == []
