"""Two callers and an operator sharing one deployment (stage dev).

A mission belongs to the principal that submitted it: others neither see it (404, as for an
unknown id) nor cancel it; an operator (the role lighthpc-dev-operator) sees and cancels all.
Inputs live under a folder per caller, so nobody can bind another caller's upload.
"""

from __future__ import annotations

import pytest

from chalicelib.auth import input_prefix
from local.inprocess import InProcessCluster
from tests.functional.test_auth import call, signed_as, stored_missions
from tests.functional.test_mission import kmer_config

pytestmark = pytest.mark.filterwarnings(
    "ignore:IAMAuthorizer is not a supported in local mode:UserWarning"
)

ALICE = "arn:aws:sts::111122223333:assumed-role/lighthpc-submitter/alice"
BOB = "arn:aws:iam::111122223333:user/bob"
OPERATOR = "arn:aws:sts::111122223333:assumed-role/lighthpc-dev-operator/carol"


def submit_as(cluster: InProcessCluster, who: str, name: str) -> str:
    with signed_as(who):
        status, created = call(
            cluster, "POST", "/missions", kmer_config(name, input_prefix(who) + f"{name}.fa")
        )
    assert status == 201, created
    assert created["submitted_by"] == who
    return created["mission_id"]


def as_caller(cluster: InProcessCluster, who: str, method: str, path: str) -> tuple[int, dict]:
    with signed_as(who):
        return call(cluster, method, path)


def listed(cluster: InProcessCluster, who: str) -> list[str]:
    status, answer = as_caller(cluster, who, "GET", "/missions")
    assert status == 200, answer
    return [m["mission_id"] for m in answer["missions"]]


def test_each_caller_lists_reads_and_cancels_only_its_own_missions(dev: InProcessCluster):
    alices = submit_as(dev, ALICE, "alice-1")
    bobs = submit_as(dev, BOB, "bob-1")

    assert listed(dev, ALICE) == [alices]
    assert listed(dev, BOB) == [bobs]

    for mine, theirs, who in ((alices, bobs, ALICE), (bobs, alices, BOB)):
        assert as_caller(dev, who, "GET", f"/missions/{mine}")[0] == 200
        assert as_caller(dev, who, "GET", f"/missions/{mine}/transactions")[0] == 200
        for method, path in (
            ("GET", f"/missions/{theirs}"),
            ("GET", f"/missions/{theirs}/transactions"),
            ("DELETE", f"/missions/{theirs}"),
        ):
            status, answer = as_caller(dev, who, method, path)
            # The same answer as for an id that does not exist: nothing is learnt.
            assert (status, answer) == (404, {"error": f"no mission {theirs!r}"}), (method, path)

    # Bob's refused DELETE changed nothing; Alice's own cancel works.
    statuses = {m["mission_id"]["S"]: m["status"]["S"] for m in stored_missions(dev)}
    assert statuses == {alices: "AWAITING_INPUT", bobs: "AWAITING_INPUT"}
    status, cancelled = as_caller(dev, ALICE, "DELETE", f"/missions/{alices}")
    assert status == 200 and cancelled["status"] == "CANCELLED", cancelled
    assert as_caller(dev, BOB, "GET", f"/missions/{bobs}")[1]["status"] == "AWAITING_INPUT"


def test_binding_another_callers_input_is_refused_and_writes_nothing(dev: InProcessCluster):
    bobs_key = input_prefix(BOB) + "bob-data.fa"
    for key in (bobs_key, "shared/anything.fa", "inputs/111122223333/user/bo/x.fa"):
        with signed_as(ALICE):
            status, answer = call(dev, "POST", "/missions", kmer_config("steal", key))
        assert status == 403, answer
        assert answer["error"] == "input not yours"
        [field] = answer["fields"]
        assert field["field"] == "input"
        assert input_prefix(ALICE) in field["reason"], field
    assert stored_missions(dev) == []
    # Bob binds his own key; Alice still cannot, even with the key now bound.
    submit_as(dev, BOB, "bob-data")
    with signed_as(ALICE):
        assert call(dev, "POST", "/missions", kmer_config("steal", bobs_key))[0] == 403


def test_an_operator_sees_and_cancels_every_mission(dev: InProcessCluster):
    alices = submit_as(dev, ALICE, "alice-2")
    bobs = submit_as(dev, BOB, "bob-2")

    assert listed(dev, OPERATOR) == [bobs, alices]  # newest first
    status, mission = as_caller(dev, OPERATOR, "GET", f"/missions/{alices}")
    assert status == 200 and mission["submitted_by"] == ALICE
    assert "notify" in mission["config"]  # the config, with its notify address, is the owner's
    status, cancelled = as_caller(dev, OPERATOR, "DELETE", f"/missions/{bobs}")
    assert status == 200 and cancelled["status"] == "CANCELLED", cancelled
    # The operator's own missions: its own folder, or any input (it may bind anything).
    with signed_as(OPERATOR):
        status, created = call(dev, "POST", "/missions", kmer_config("ops", "shared/ref.fa"))
    assert status == 201, created
    assert listed(dev, ALICE) == [alices] and listed(dev, BOB) == [bobs]


def test_me_tells_a_caller_who_it_is_and_where_its_inputs_go(dev: InProcessCluster):
    assert as_caller(dev, BOB, "GET", "/me") == (
        200,
        {"principal": BOB, "operator": False, "input_prefix": "inputs/111122223333/user/bob/"},
    )
    status, me = as_caller(dev, OPERATOR, "GET", "/me")
    assert status == 200 and me["operator"] is True
