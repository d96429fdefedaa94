"""Least privilege, statically: no wildcard action, no `*` resource where AWS can scope one,
one policy file per function Chalice deploys, and Chalice's own policy generation off.
(tests/functional/test_iam_in_use.py holds the same policies to the calls the code makes.)"""

from __future__ import annotations

import json

import pytest

from tests.deploy.policies import (
    CHALICE_DIR,
    FUNCTION_POLICY_FILES,
    as_list,
    function_statements,
    worker_statements,
)

# Actions that have no resource-level permissions in IAM: "*" is the only resource they take.
UNSCOPABLE_ACTIONS = {"ec2:DescribeInstances"}


def all_policies() -> dict[str, list[dict]]:
    policies = {name: function_statements(name) for name in FUNCTION_POLICY_FILES}
    policies["worker"] = worker_statements()
    return policies


def test_chalice_generates_no_policy_and_every_function_has_a_file():
    import app

    config = json.loads((CHALICE_DIR / "config.json").read_text())
    assert config["autogen_policy"] is False
    for stage in config["stages"].values():
        assert stage.get("autogen_policy", False) is False
    deployed = {"api_handler"} | {source.name for source in app.app.event_sources}
    assert set(FUNCTION_POLICY_FILES) == deployed


@pytest.mark.parametrize("principal", [*FUNCTION_POLICY_FILES, "worker"])
def test_no_wildcard_action_and_no_star_resource_that_could_be_scoped(principal):
    for statement in all_policies()[principal]:
        assert statement["Effect"] == "Allow", statement  # grants only; nothing to undo
        actions = as_list(statement["Action"])
        assert "NotAction" not in statement and "NotResource" not in statement, statement
        for action in actions:
            service, _, name = action.partition(":")
            assert service and name and "*" not in action and "?" not in action, action
        resources = as_list(statement["Resource"])
        if "*" in resources:
            assert set(actions) <= UNSCOPABLE_ACTIONS, statement
        for resource in resources:
            text = json.dumps(resource)
            # A resource is an ARN of this stack's own things, never a whole service.
            assert text == '"*"' or "${" in text or "Fn::GetAtt" in text or "Ref" in text, text


def test_a_policy_with_a_wildcard_fails_the_check(monkeypatch):
    """The check above can fail: feed it a policy that grants s3:* on everything."""
    bad = [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]
    monkeypatch.setattr("tests.deploy.test_iam.all_policies", lambda: {"worker": bad})
    with pytest.raises(AssertionError):
        test_no_wildcard_action_and_no_star_resource_that_could_be_scoped("worker")


def test_the_worker_may_terminate_only_itself():
    (terminate,) = [
        s for s in worker_statements() if "ec2:TerminateInstances" in as_list(s["Action"])
    ]
    assert terminate["Condition"] == {"StringEquals": {"aws:ARN": "${ec2:SourceInstanceARN}"}}


def test_functions_terminate_and_launch_only_within_their_stage():
    for name in FUNCTION_POLICY_FILES:
        for statement in function_statements(name):
            actions = as_list(statement["Action"])
            if "ec2:TerminateInstances" in actions:
                assert statement["Condition"]["StringEquals"] == {
                    "ec2:ResourceTag/lighthpc:stage": {"Ref": "Stage"}
                }
            if "iam:PassRole" in actions:
                assert statement["Resource"] == {"Fn::GetAtt": ["WorkerRole", "Arn"]}


# What the worker writes (chalicelib/store: the claim cursor and usage on a mission, and its
# own instance's usage item; claim, lease and outcome on a transaction), and what it must
# never write.
WORKER_WRITES = {
    "MissionTable": {"next_index", "instance_seconds", "estimated_cost", "accounted_by"},
    "TransactionTable": {"status", "lease_owner", "lease_expires_at", "attempts", "claims", "span"},
}
NEVER_WORKER_WRITTEN = {
    "MissionTable": {"config_json", "notify", "submitted_by", "n_succeeded", "n_failed"},
    "TransactionTable": {"counted"},
}
KEYS = {"MissionTable": {"mission_id"}, "TransactionTable": {"mission_id", "index"}}


def test_the_worker_writes_only_the_attributes_it_needs():
    """An app that got the instance role's credentials could still write only these: never a
    mission's config (and so its argv), owner, email or counts, never a transaction's count."""
    writes = [
        s
        for s in worker_statements()
        if {"dynamodb:UpdateItem", "dynamodb:PutItem"} & set(as_list(s["Action"]))
    ]
    assert {s["Resource"]["Fn::GetAtt"][0] for s in writes} == set(WORKER_WRITES)
    for statement in writes:
        table = statement["Resource"]["Fn::GetAtt"][0]
        assert as_list(statement["Action"]) == ["dynamodb:UpdateItem"], statement
        assert set(statement["Condition"]) == {"ForAllValues:StringEquals"}, statement
        (listed,) = statement["Condition"]["ForAllValues:StringEquals"].values()
        listed = set(listed)
        assert KEYS[table] | WORKER_WRITES[table] <= listed  # AWS wants the key's names too
        assert not listed & NEVER_WORKER_WRITTEN[table], table
    # Nothing that replaces or deletes whole items, on any table.
    every_action = {a for s in worker_statements() for a in as_list(s["Action"])}
    for action in ("PutItem", "DeleteItem", "BatchWriteItem", "Scan", "TransactWriteItems"):
        assert f"dynamodb:{action}" not in every_action
    # The parts only, and the inputs only by version (an app could read no live object); the
    # scheduler's line indexes (lines mode) are all it reads of the result bucket.
    puts = [s for s in worker_statements() if "s3:PutObject" in as_list(s["Action"])]
    assert [s["Resource"] for s in puts] == [{"Fn::Sub": "${ResultBucket.Arn}/parts/*"}]
    reads = {
        a: s["Resource"]
        for s in worker_statements()
        for a in as_list(s["Action"])
        if a.startswith("s3:Get")
    }
    assert reads == {
        "s3:GetObjectVersion": {"Fn::Sub": "${SourceBucket.Arn}/*"},
        "s3:GetObject": {"Fn::Sub": "${ResultBucket.Arn}/plans/*"},
    }
