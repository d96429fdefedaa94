"""POST /missions with an Idempotency-Key (Powertools Idempotency on moto's DynamoDB)."""

from __future__ import annotations

import json

import boto3

from local.inprocess import InProcessCluster
from tests.functional.test_mission import kmer_config


def post(cluster: InProcessCluster, config: dict, key: str | None):
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    response = cluster.api.http.post("/missions", headers=headers, body=json.dumps(config))
    return response.status_code, json.loads(response.body)


def test_a_retried_submission_gets_the_first_answer_and_starts_nothing_twice(cluster):
    config = kmer_config("retry", "retry.fa")
    first = post(cluster, config, "client-retry-1")
    again = post(cluster, config, "client-retry-1")
    assert first[0] == again[0] == 201
    assert again[1] == first[1]
    listed = json.loads(cluster.get("/missions").body)["missions"]
    assert [m["mission_id"] for m in listed] == [first[1]["mission_id"]]


def test_the_same_key_with_another_body_is_a_conflict(cluster):
    status, _ = post(cluster, kmer_config("one", "one.fa"), "k-1")
    assert status == 201
    status, body = post(cluster, kmer_config("two", "two.fa"), "k-1")
    assert status == 409 and "different request body" in body["error"]
    assert len(json.loads(cluster.get("/missions").body)["missions"]) == 1


def test_errors_are_not_stored_so_a_corrected_request_may_reuse_its_key(cluster):
    broken = kmer_config("fix me", "fix.fa", max_attempts=0)
    status, body = post(cluster, broken, "k-2")
    assert status == 400 and body["fields"][0]["field"] == "max_attempts"
    status, body = post(cluster, kmer_config("fixed", "fix.fa"), "k-2")
    assert status == 201, body


def test_a_malformed_key_is_a_400_naming_the_header(cluster):
    status, body = post(cluster, kmer_config("bad key", "k.fa"), "has spaces")
    assert status == 400 and body["error"] == "invalid request"
    assert body["fields"][0]["field"] == "Idempotency-Key"
    assert json.loads(cluster.get("/missions").body)["missions"] == []


def test_without_a_key_nothing_is_kept(cluster):
    status, _ = post(cluster, kmer_config("plain", "plain.fa"), None)
    assert status == 201
    table = cluster.stack.outputs["IdempotencyTableName"]
    items = boto3.client("dynamodb", region_name=cluster.stack.region).scan(TableName=table)
    assert items["Count"] == 0


def test_a_bad_query_parameter_is_an_invalid_request_not_an_invalid_config(cluster):
    status, created = post(cluster, kmer_config("paged", "paged.fa"), None)
    assert status == 201
    mission_id = created["mission_id"]
    response = cluster.get(f"/missions/{mission_id}/transactions?limit=many")
    assert response.status_code == 400
    body = json.loads(response.body)
    assert body == {
        "error": "invalid request",
        "fields": [
            {"field": "limit", "reason": "must be an integer from 1 to 9223372036854775807"}
        ],
    }
