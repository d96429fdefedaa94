"""GET /openapi.json serves the checked-in description, behind SigV4 like every other route."""

from __future__ import annotations

import json

import pytest

from chalicelib import openapi
from local.inprocess import InProcessCluster
from tests.functional.test_auth import ALICE, signed_as

pytestmark = pytest.mark.filterwarnings(
    "ignore:IAMAuthorizer is not a supported in local mode:UserWarning"
)


def test_the_local_stage_serves_the_checked_in_description(tmp_path):
    with InProcessCluster.running(workdir=tmp_path) as cluster:
        response = cluster.get(openapi.ROUTE)
    assert response.status_code == 200, response.body
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body) == json.loads(openapi.PATH.read_text(encoding="utf-8"))


def test_a_deployed_stage_serves_it_to_signed_callers_only(tmp_path):
    with InProcessCluster.running(stage="dev", workdir=tmp_path) as cluster:
        unsigned = cluster.get(openapi.ROUTE)
        with signed_as(ALICE):
            signed = cluster.get(openapi.ROUTE)
    assert unsigned.status_code == 401, unsigned.body
    assert signed.status_code == 200, signed.body
    assert json.loads(signed.body)["info"]["title"] == "lighthpc"
