"""The API fuzzed from its OpenAPI description (schemathesis): no 5xx, nothing written on a 4xx.

schemathesis reads chalicelib/openapi.json (what `GET /openapi.json` serves: test_openapi_route)
and sends what it derives from it to the app, in-process on moto's mock (chalice's local gateway
behind a small WSGI adapter): the description's examples, boundary and type-mutation cases for
every parameter and body field (the coverage phase), and random valid and invalid requests (the
fuzzing phase). Every answer must be documented (status, content type, body schema), anything
the description forbids must be refused, no answer may be a 5xx, a 4xx may leave no write behind
(`test_api_5xx.lasting_writes`), and no call may be one AWS refuses where moto does not (a key
over 2048 bytes).

Two missions are made first, so the examples reach real ones: one planned (12 transactions to
page through), one for DELETE. Deterministic (derandomized, no example database); about 1,500
requests in under a minute and a half on a loaded 2-core machine.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from chalicelib import openapi
from chalicelib.context import get_context
from local.inprocess import InProcessCluster
from tests.functional.test_api_5xx import Ledger, lasting_writes
from tests.functional.test_mission import SAMPLE, kmer_config, submit

MAX_EXAMPLES = 200  # per operation, for the fuzzing phase (the other phases are finite)
READ, CANCEL = "m-fuzz-read", "m-fuzz-cancel"  # examples of `mission_id`: the fixture's missions
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@dataclass
class Fuzzed:
    cluster: InProcessCluster
    ledger: Ledger
    missions: dict[str, str]  # example id -> the real mission's id
    answers: Counter[str] = field(default_factory=Counter)  # "METHOD path status" -> requests

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        """The request, through chalice's local gateway (what `chalice.test.Client` drives)."""
        path = environ.get("RAW_URI") or quote(environ.get("PATH_INFO", "/"))
        if "?" not in path and environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers[key.replace("_", "-").title()] = environ[key]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        response = self.cluster.api.http.request(
            environ["REQUEST_METHOD"], path, headers=headers, body=body
        )
        start_response(f"{response.status_code} -", list(response.headers.items()))
        return [response.body or b""]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> Iterator[Fuzzed]:
    workdir = tmp_path_factory.mktemp("fuzz")
    with InProcessCluster.running(workdir=workdir) as cluster, Ledger.installed() as ledger:
        cluster.deliver_source_events()  # S3's s3:TestEvent
        read_id = submit(cluster, kmer_config("fuzz: paged", "fuzz/paged.fa", count=12))
        cluster.upload("fuzz/paged.fa", SAMPLE)
        cluster.deliver_source_events()
        cancel_id = submit(cluster, kmer_config("fuzz: cancelled", "fuzz/cancelled.fa"))
        fuzzed = Fuzzed(cluster, ledger, {READ: read_id, CANCEL: cancel_id})
        yield fuzzed
        sent = sum(fuzzed.answers.values())
        print(f"\nfuzzed {sent} requests:", json.dumps(dict(sorted(fuzzed.answers.items()))))


def _description() -> dict[str, Any]:
    """The checked-in description, with the example ids as examples of `mission_id`."""
    description = copy.deepcopy(openapi.document())
    by_id = description["paths"]["/missions/{mission_id}"]
    (param,) = by_id["parameters"]
    for operation, example in ((by_id["get"], READ), (by_id["delete"], CANCEL)):
        operation["parameters"] = [{**param, "example": example}]
    page = description["paths"]["/missions/{mission_id}/transactions"]
    page["parameters"] = [{**param, "example": READ}]
    return description


# Loaded at import: schemathesis.pytest.from_fixture needs pytest < 9 (it reads Function._nodeid).
schema = schemathesis.openapi.from_dict(_description())
schema.config.update(base_url="http://localhost")
# The local stage needs no signature: the fuzzer leaves `Authorization` out, and does not count
# the missing header as invalid data (the 401 of deployed stages: tests/functional/test_auth.py).
schema.config.generation.update(deterministic=True, database="none", with_security_parameters=False)
# Chalice's local gateway answers OPTIONS itself (a CORS preflight without a body, which
# chalice.test cannot read), as API Gateway does without the app: never the app's to answer.
coverage = schema.config.phases.coverage
coverage.unexpected_methods = coverage.unexpected_methods - {"options"}


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_5xx_and_no_write_on_a_4xx(case, fuzzed: Fuzzed):
    mission_id = case.path_parameters.get("mission_id")
    if mission_id in fuzzed.missions:
        case.path_parameters["mission_id"] = fuzzed.missions[mission_id]
    fuzzed.ledger.take()
    fuzzed.ledger.refused.clear()
    response = case.call(app=fuzzed.wsgi)
    fuzzed.answers[f"{case.method} {case.operation.path} {response.status_code}"] += 1
    writes = lasting_writes(fuzzed.ledger.take(), get_context().settings.idempotency_table)
    case.validate_response(response, checks=CHECKS, transport_kwargs={"app": fuzzed.wsgi})
    assert fuzzed.ledger.refused == [], fuzzed.ledger.refused
    if 400 <= response.status_code < 500:
        assert writes == [], (response.status_code, response.text, writes)
