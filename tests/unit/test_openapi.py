"""The OpenAPI description: checked in as what the models make, valid, one entry per route, and
never stricter than the API (a config the API takes is valid under its schema)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from chalicelib import openapi
from chalicelib.config import MissionConfig, parse_mission_config
from tests.unit.test_config import ARGV, KMER, LOCAL, SEQ_STATS


def test_the_checked_in_description_is_what_the_models_make():
    checked_in = openapi.PATH.read_text(encoding="utf-8")
    assert checked_in == openapi.render(openapi.build()), (
        "chalicelib/openapi.json is out of date: run .venv/bin/python -m chalicelib.openapi"
    )
    assert openapi.main(["--check"]) == 0
    assert openapi.document() == json.loads(checked_in)


def test_it_is_valid_openapi_3_1():
    validate(openapi.document())
    assert openapi.document()["openapi"] == "3.1.0"


def test_it_describes_every_route_and_nothing_else():
    import app

    routes = {
        (method.lower(), path) for path, by_method in app.app.routes.items() for method in by_method
    }
    described = {
        (method, path)
        for path, item in openapi.document()["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert described == routes
    assert (("get", openapi.ROUTE)) in routes


def test_every_operation_documents_its_errors():
    for path, item in openapi.document()["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            codes = set(operation["responses"])
            assert "401" in codes, (method, path)  # deployed stages: SigV4 or a 401
            if path.startswith("/missions/{mission_id}"):
                assert "404" in codes, (method, path)


def _validator(name: str) -> Draft202012Validator:
    root = copy.deepcopy(openapi.document())
    root["$ref"] = f"#/components/schemas/{name}"
    return Draft202012Validator(root)


@pytest.mark.parametrize("config", [KMER, SEQ_STATS, ARGV], ids=["kmer", "seq-stats", "argv"])
def test_a_config_the_api_takes_is_valid_under_the_schema(config: dict[str, Any]):
    parsed = parse_mission_config(json.dumps(config), LOCAL)
    schema = _validator("MissionConfig")
    assert list(schema.iter_errors(config)) == []
    # What GET /missions/{id} shows as `config`: every default filled in.
    assert list(schema.iter_errors(parsed.model_dump(mode="json"))) == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"name": " \t"}, "blank"),
        ({"name": "a\x00b"}, "control character"),
        ({"input": "/abs"}, "absolute key"),
        ({"app": {"builtin": ["kmer-match"]}}, "builtin not a string"),
        ({"app": {"argv": ["run", "a\nb"]}}, "control character in argv"),
        ({"instances": {"types": ["c5.large", "c5.large"]}}, "repeated type"),
        ({"split": {"mode": "count", "count": 1, "interval": {"start": 0, "end": 2**63}}}, "64"),
    ],
)
def test_what_the_schema_refuses_the_api_refuses(change: dict[str, Any], reason: str):
    config = {**KMER, **change}
    assert list(_validator("MissionConfig").iter_errors(config)), reason
    with pytest.raises(ValueError):
        parse_mission_config(json.dumps(config), LOCAL)


def test_the_config_schema_is_the_models():
    schemas = openapi.document()["components"]["schemas"]
    generated = MissionConfig.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, schema in generated.pop("$defs").items():
        assert schemas[name] == schema, name
    assert {k: v for k, v in schemas["MissionConfig"].items() if k != "description"} == {
        k: v for k, v in generated.items() if k != "description"
    }
