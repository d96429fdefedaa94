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
