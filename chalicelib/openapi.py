"""The REST API's OpenAPI 3.1 description, served by `GET /openapi.json`.

`chalicelib/openapi.json` is the description: checked in, packaged with the Lambda (everything
in chalicelib/ is) and read once per process by `document()`. `build()` makes it from the
routes' contract written out below and from the pydantic models (the mission config's schema is
`MissionConfig.model_json_schema()`, the statuses are the state enums), and a unit test keeps
the two equal: after changing a model or a route, regenerate with `python -m chalicelib.openapi`.

The fuzz test (tests/functional/test_fuzz_api.py) generates requests from this file.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

from chalicelib import dashboard
from chalicelib.apps import BUILTIN_APPS
from chalicelib.config import (
    MAX_BODY_BYTES,
    MAX_NESTING,
    QUERY_INT_MAX,
    MissionConfig,
    PipelineConfig,
)
from chalicelib.idempotency import _KEY as IDEMPOTENCY_KEY
from chalicelib.idempotency import HEADER as IDEMPOTENCY_HEADER
from chalicelib.idempotency import KEEP_ANSWERS_SECONDS
from chalicelib.missions import PAGE_LIMIT
from chalicelib.states import MissionStatus, TransactionStatus

PATH = Path(__file__).with_name("openapi.json")
ROUTE = "/openapi.json"
VERSION = "0.1.0"
_REF = "#/components/schemas/{model}"


@cache
def document() -> dict[str, Any]:
    """The checked-in description, as served."""
    return json.loads(PATH.read_text(encoding="utf-8"))


def render(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict:
    # Answers may gain fields; clients ignore the ones they do not know.
    return {"type": "object", "properties": properties, "required": required or [], **extra}


TIME = {"type": "string", "format": "date-time"}
TEXT = {"type": "string"}


def _schemas() -> dict[str, Any]:
    config = MissionConfig.model_json_schema(ref_template=_REF)
    schemas: dict[str, Any] = config.pop("$defs")
    config["description"] = (
        "A mission: its input (a key in the stage's source bucket), how to split the work into"
        " transactions, the app each transaction runs and on what instances. Stages add limits"
        " no schema shows (at most MAX_TRANSACTIONS transactions and MAX_INSTANCES instances;"
        " deployed stages run only built-in apps or allowed programs); the 400 names the field."
        f" The body is at most {MAX_BODY_BYTES} bytes, nested at most {MAX_NESTING} deep."
        f" Built-in apps: {', '.join(sorted(BUILTIN_APPS))}."
    )
    schemas["MissionConfig"] = config
    summary = {
        "mission_id": {**TEXT, "description": "m-YYYYmmddHHMMSS-<8 hex digits>"},
        "name": TEXT,
        "status": {"type": "string", "enum": [s.value for s in MissionStatus]},
        "error": _nullable(TEXT),
        "submitted_by": _nullable(TEXT),
        "created_at": TIME,
        "started_at": _nullable(TIME),
        "running_at": _nullable(TIME),
        "finished_at": _nullable(TIME),
        "notified_at": _nullable(TIME),
        "result": _nullable(
            {
                **TEXT,
                "description": "s3:// URI of the merged result (with a reduce: its output)",
            }
        ),
        "reduce": _nullable({**TEXT, "description": "the id of its reduce stage's mission"}),
        "reduce_of": _nullable({**TEXT, "description": "this is that mission's reduce stage"}),
        "pipeline": _nullable({**TEXT, "description": "the pipeline it is a stage of"}),
    }
    schemas["MissionSummary"] = _object(summary, list(summary))
    schemas["MissionCreated"] = {
        "allOf": [
            _ref("MissionSummary"),
            _object(
                {
                    "upload": _nullable(
                        _object(
                            {"bucket": TEXT, "key": TEXT, "uri": TEXT},
                            ["bucket", "key", "uri"],
                            description=(
                                "Where to upload the input; the upload starts the mission."
                                " Null for a mission fed by another mission's result."
                            ),
                        )
                    )
                },
                ["upload"],
            ),
        ]
    }
    counts = {s.value: {"type": "integer", "minimum": 0} for s in TransactionStatus}
    counts["total"] = {"type": "integer", "minimum": 0}
    schemas["Mission"] = {
        "allOf": [
            _ref("MissionSummary"),
            _object(
                {
                    "transactions": _object(counts, list(counts)),
                    "instances": {"type": "integer", "minimum": 0},
                    "instance_seconds": {"type": "number", "minimum": 0},
                    "estimated_cost_usd": {"type": "number", "minimum": 0},
                    "launch_errors": _nullable(TEXT),
                    "input": _object(
                        {
                            "bucket": TEXT,
                            "key": _nullable(TEXT),
                            "etag": _nullable(TEXT),
                            "bytes": _nullable({"type": "integer", "minimum": 0}),
                            "mission": _nullable(
                                {**TEXT, "description": "the mission whose result it reads"}
                            ),
                        },
                        ["key", "etag", "bytes"],
                    ),
                    "config": _ref("MissionConfig"),
                },
                ["transactions", "instances", "instance_seconds", "estimated_cost_usd", "config"],
            ),
        ]
    }
    schemas["MissionCancelled"] = {
        "allOf": [
            _ref("MissionSummary"),
            _object(
                {"instances_terminated": {"type": "integer", "minimum": 0}},
                ["instances_terminated"],
            ),
        ]
    }
    schemas["MissionList"] = _object(
        {"missions": {"type": "array", "items": _ref("MissionSummary")}},
        ["missions"],
        description="The newest missions the caller may see (its own; an operator's: all).",
    )
    transaction = {
        "index": {"type": "integer", "minimum": 0},
        "status": {"type": "string", "enum": [s.value for s in TransactionStatus]},
        "start": {"type": "integer"},
        "end": {"type": "integer"},
        "attempts": {"type": "integer", "minimum": 0},
        "lease_owner": _nullable(TEXT),
        "exit_code": _nullable({"type": "integer"}),
        "error": _nullable(TEXT),
        "started_at": _nullable(TIME),
        "finished_at": _nullable(TIME),
        "run_seconds": _nullable({"type": "number"}),
    }
    schemas["Transaction"] = _object(transaction, ["index", "status", "start", "end"])
    schemas["TransactionPage"] = _object(
        {
            "transactions": {"type": "array", "items": _ref("Transaction")},
            "next_after": _nullable(
                {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Pass as `after` for the next page; null on the last page.",
                }
            ),
        },
        ["transactions", "next_after"],
    )
    schemas["Caller"] = _object(
        {
            "principal": {**TEXT, "description": "The IAM principal (`local` locally)."},
            "operator": {"type": "boolean", "description": "Sees and cancels every mission."},
            "input_prefix": _nullable(
                {**TEXT, "description": "The only keys this caller may name as `input`."}
            ),
        },
        ["principal", "operator", "input_prefix"],
    )
    schemas["FieldError"] = _object(
        {
            "field": {
                **TEXT,
                "description": "Dotted path in the body (`split.count`, `instances.types.0`),"
                " `(body)` for the body as a whole, or the query parameter or header.",
            },
            "reason": TEXT,
        },
        ["field", "reason"],
    )
    schemas["FieldErrors"] = _object(
        {
            "error": {
                **TEXT,
                "description": "`invalid mission config`, `invalid request` (a query parameter"
                " or header) or `input not yours`",
            },
            "fields": {"type": "array", "items": _ref("FieldError"), "minItems": 1},
        },
        ["error", "fields"],
    )
    schemas["Error"] = _object(
        {
            "error": TEXT,
            "mission_id": _nullable(
                {**TEXT, "description": "On a busy input: the mission that holds it."}
            ),
        },
        ["error"],
    )
    schemas["Unauthenticated"] = _object(
        {"error": TEXT, "reason": TEXT, "stage": TEXT}, ["error", "reason", "stage"]
    )
    schemas["ChaliceError"] = _object(
        {"Code": TEXT, "Message": TEXT},
        ["Code", "Message"],
        description="Chalice's own answer, e.g. to a body that is not application/json.",
    )
    schemas.update(_dashboard_schemas(counts))
    return schemas


def _dashboard_schemas(counts: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's answers (chalicelib.dashboard)."""
    index = {"type": "integer", "minimum": 0}
    number = {"type": "number", "minimum": 0}
    schemas: dict[str, Any] = {}
    schemas["Overview"] = _object(
        {
            "missions": {
                "type": "array",
                "items": {
                    "allOf": [
                        _ref("MissionSummary"),
                        _object(
                            {
                                "transactions": _object(counts, list(counts)),
                                "instances": index,
                                "instance_seconds": number,
                                "estimated_cost_usd": number,
                            },
                            ["transactions", "instances", "instance_seconds", "estimated_cost_usd"],
                        ),
                    ]
                },
            },
            "now": TIME,
        },
        ["missions", "now"],
        description="The newest missions the caller may see, each with its counts and cost.",
    )
    failure = _object(
        {
            "index": index,
            "span": {"type": "integer", "minimum": 1},
            "attempts": index,
            "exit_code": _nullable({"type": "integer"}),
            "error_tail": TEXT,
            "finished_at": _nullable(TIME),
        },
        ["index", "attempts", "exit_code", "error_tail"],
    )
    codes = "".join(dashboard.STATUS_CODES)
    schemas["TransactionMap"] = _object(
        {
            "mission_id": TEXT,
            "status": {"type": "string", "enum": [s.value for s in MissionStatus]},
            "total": index,
            "claim_cursor": {**index, "description": "Indexes below it were handed out."},
            "transactions": _object(counts, list(counts)),
            "first": index,
            "last": _nullable(index),
            "next_first": _nullable(
                {**index, "description": "Pass as `first` for the rest; null when covered."}
            ),
            "codes": {"type": "object", "additionalProperties": TEXT},
            "per_cell": {"type": "integer", "minimum": 1},
            "statuses": {
                "type": "string",
                "pattern": f"^[{codes}]*$",
                "description": "With per_cell 1: one status code per transaction, first..last.",
            },
            "buckets": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": index},
                "description": "With per_cell above 1: per status code, its count per bucket.",
            },
            "failures": {"type": "array", "items": failure},
        },
        ["mission_id", "status", "total", "first", "last", "next_first", "per_cell", "failures"],
    )
    schemas["Timeline"] = _object(
        {
            "mission_id": TEXT,
            "status": {"type": "string", "enum": [s.value for s in MissionStatus]},
            "now": TIME,
            "claim_cursor": index,
            "attempts": {
                "type": "array",
                "items": _object(
                    {
                        "index": index,
                        "span": {"type": "integer", "minimum": 1},
                        "instance": TEXT,
                        "status": {"type": "string", "enum": [s.value for s in TransactionStatus]},
                        "started_at": TIME,
                        "finished_at": _nullable(TIME),
                        "run_seconds": _nullable({"type": "number"}),
                        "attempts": index,
                        "exit_code": _nullable({"type": "integer"}),
                    },
                    ["index", "instance", "status", "started_at"],
                ),
            },
            "marks": {
                "type": "array",
                "items": _object(
                    {
                        "index": index,
                        "kind": {"type": "string", "enum": ["lost", "spot"]},
                        "instance": _nullable(TEXT),
                        "reason": TEXT,
                    },
                    ["index", "kind", "instance", "reason"],
                ),
            },
            "instances": _nullable(
                {
                    "type": "array",
                    "description": "The mission's instances (on the first page only).",
                    "items": _object(
                        {
                            "instance_id": TEXT,
                            "state": _nullable(TEXT),
                            "launched_at": _nullable(TIME),
                            "market": TEXT,
                            "type": _nullable(TEXT),
                            "state_reason": _nullable(TEXT),
                        },
                        ["instance_id", "state"],
                    ),
                }
            ),
            "next_after": _nullable(index),
        },
        ["mission_id", "status", "attempts", "marks", "instances", "next_after"],
    )
    pipeline_config = PipelineConfig.model_json_schema(ref_template=_REF)
    for name, schema in pipeline_config.pop("$defs").items():
        schemas.setdefault(name, schema)
    pipeline_config["description"] = (
        "Stages submitted together: each a mission config (without `notify`), fed by an upload,"
        ' by another stage (`"input": {"stage": NAME}`) or by an earlier mission'
        ' (`"input": {"mission": ID}`). Stage names are unique; no cycles; one email for the'
        " whole pipeline, to its `notify`, once every stage ended."
    )
    schemas["PipelineConfig"] = pipeline_config
    stage_created = _object(
        {
            "stage": TEXT,
            "mission_id": TEXT,
            "status": {"type": "string", "enum": [s.value for s in MissionStatus]},
            "upload": _nullable(
                _object({"bucket": TEXT, "key": TEXT, "uri": TEXT}, ["bucket", "key", "uri"])
            ),
        },
        ["stage", "mission_id", "status", "upload"],
    )
    status = {"type": "string", "enum": [s.value for s in MissionStatus]}
    schemas["PipelineCreated"] = _object(
        {
            "pipeline_id": {**TEXT, "description": "p-YYYYmmddHHMMSS-<8 hex digits>"},
            "name": TEXT,
            "status": status,
            "stages": {"type": "array", "items": stage_created},
        },
        ["pipeline_id", "name", "status", "stages"],
    )
    schemas["Pipeline"] = _object(
        {
            "pipeline_id": TEXT,
            "name": TEXT,
            "status": status,
            "notify": _nullable(TEXT),
            "budget_usd": _nullable({"type": "number"}),
            "estimated_cost_usd": {"type": "number", "minimum": 0},
            "notified_at": _nullable(TIME),
            "stages": {
                "type": "array",
                "items": {
                    "allOf": [
                        _ref("MissionSummary"),
                        _object(
                            {
                                "stage": TEXT,
                                "transactions": _object(counts, list(counts)),
                                "estimated_cost_usd": {"type": "number", "minimum": 0},
                                "input_mission": _nullable(TEXT),
                            },
                            ["stage", "transactions", "estimated_cost_usd"],
                        ),
                    ]
                },
            },
        },
        ["pipeline_id", "name", "status", "estimated_cost_usd", "stages"],
    )
    schemas["Outcome"] = {
        "allOf": [
            _ref("Mission"),
            _object(
                {
                    "now": TIME,
                    "manifest": _nullable(
                        _object({"uri": TEXT, "sha256": _nullable(TEXT)}, ["uri", "sha256"])
                    ),
                    "email": _nullable(
                        _object(
                            {"sent_at": TIME, "to": _nullable(TEXT), "subject": TEXT},
                            ["sent_at", "subject"],
                        )
                    ),
                },
                ["manifest", "email"],
            ),
        ]
    }
    return schemas


def _responses(ok: int, schema: str, description: str, *errors: int) -> dict[str, Any]:
    known = {
        400: _json("FieldErrors", "Invalid: each bad field with its reason; nothing written."),
        401: {
            **_json("Unauthenticated", "No SigV4-authenticated caller (deployed stages)."),
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        },
        403: _json("FieldErrors", "The input key is outside the caller's own prefix."),
        404: _json("Error", "No such mission or pipeline (or not the caller's)."),
        409: _json("Error", "Conflict: see `error`; nothing written."),
        415: _json("ChaliceError", "The body is not application/json."),
    }
    return {str(ok): _json(schema, description), **{str(code): known[code] for code in errors}}


MISSION_ID = {
    "name": "mission_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
    "description": "As POST /missions answered it: m-YYYYmmddHHMMSS-<8 hex digits>.",
}


PIPELINE_ID = {
    "name": "pipeline_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
    "description": "As POST /pipelines answered it: p-YYYYmmddHHMMSS-<8 hex digits>.",
}


def _paths() -> dict[str, Any]:
    idempotency_key = {
        "name": IDEMPOTENCY_HEADER,
        "in": "header",
        "required": False,
        "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY.pattern}$"},
        "description": "A retry with the same key and body gets the first answer again (for"
        f" {KEEP_ANSWERS_SECONDS // 3600} hours); the same key with another body is a 409.",
    }
    page = {
        "after": {
            "description": "Transactions after this index (-1: from the first).",
            "schema": {"type": "integer", "minimum": -1, "maximum": QUERY_INT_MAX, "default": -1},
        },
        "limit": {
            "description": f"Transactions per page; more than {PAGE_LIMIT} count as {PAGE_LIMIT}.",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": QUERY_INT_MAX,
                "default": PAGE_LIMIT,
            },
        },
    }
    return {
        "/missions": {
            "post": {
                "operationId": "createMission",
                "summary": "Submit a mission config",
                "description": "Stores the mission (AWAITING_INPUT) and binds its input key;"
                " the mission starts once the input is uploaded to the answer's `upload`.",
                "parameters": [idempotency_key],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("MissionConfig")}},
                },
                "responses": _responses(201, "MissionCreated", "Stored.", 400, 401, 403, 409, 415),
            },
            "get": {
                "operationId": "listMissions",
                "summary": "The newest missions, newest first",
                "responses": _responses(200, "MissionList", "The missions.", 401),
            },
        },
        "/me": {
            "get": {
                "operationId": "whoAmI",
                "summary": "Who the API takes the caller to be, and where its inputs go",
                "responses": _responses(200, "Caller", "The caller.", 401),
            }
        },
        "/missions/{mission_id}": {
            "parameters": [MISSION_ID],
            "get": {
                "operationId": "describeMission",
                "summary": "A mission: status, counts by transaction status, cost, config",
                "responses": _responses(200, "Mission", "The mission.", 401, 404),
            },
            "delete": {
                "operationId": "cancelMission",
                "summary": "Cancel a mission: no new claims, its instances terminated",
                "responses": _responses(200, "MissionCancelled", "Cancelled.", 401, 404, 409),
            },
        },
        "/missions/{mission_id}/transactions": {
            "parameters": [MISSION_ID],
            "get": {
                "operationId": "listTransactions",
                "summary": "A page of a mission's transactions, in index order",
                "parameters": [
                    {"name": name, "in": "query", "required": False, **spec}
                    for name, spec in page.items()
                ],
                "responses": _responses(200, "TransactionPage", "The page.", 400, 401, 404),
            },
        },
        "/pipelines": {
            "post": {
                "operationId": "createPipeline",
                "summary": "Submit a pipeline: stages that feed each other, mailed as one",
                "description": "Stores every stage (AWAITING_INPUT) all or none; a stage fed by"
                " an upload starts once it is uploaded to its `upload`, one fed by another stage"
                " once that stage SUCCEEDED (it fails if that one fails or is cancelled).",
                "parameters": [idempotency_key],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("PipelineConfig")}},
                },
                "responses": _responses(201, "PipelineCreated", "Stored.", 400, 401, 403, 409, 415),
            },
        },
        "/pipelines/{pipeline_id}": {
            "parameters": [PIPELINE_ID],
            "get": {
                "operationId": "describePipeline",
                "summary": "A pipeline: its status and each stage's",
                "responses": _responses(200, "Pipeline", "The pipeline.", 401, 404),
            },
            "delete": {
                "operationId": "cancelPipeline",
                "summary": "Cancel every stage of a pipeline that has not ended",
                "responses": _responses(200, "Pipeline", "Cancelled.", 401, 404, 409),
            },
        },
        **_dashboard_paths(),
        ROUTE: {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This description",
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 description of the API.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "401": _responses(200, "Error", "", 401)["401"],
                },
            }
        },
    }


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def _dashboard_paths() -> dict[str, Any]:
    """The dashboard's reads: each bounded per call at any mission size."""

    def integer(minimum: int, **extra: Any) -> dict[str, Any]:
        return {"type": "integer", "minimum": minimum, "maximum": QUERY_INT_MAX, **extra}

    span, cells = dashboard.MAP_RANGE_LIMIT, dashboard.MAP_CELLS_LIMIT
    timeline_limit = dashboard.TIMELINE_RANGE_LIMIT
    return {
        "/overview": {
            "get": {
                "operationId": "overview",
                "summary": "The newest missions with their counts, instance-seconds and cost",
                "parameters": [
                    _query(
                        "status",
                        "Only missions with this status.",
                        {"type": "string", "enum": [s.value for s in MissionStatus]},
                    )
                ],
                "responses": _responses(200, "Overview", "The missions.", 400, 401),
            }
        },
        "/missions/{mission_id}/map": {
            "parameters": [MISSION_ID],
            "get": {
                "operationId": "transactionMap",
                "summary": "The status of each transaction of an index range (the map)",
                "description": f"At most {span} indexes a call (`next_first` continues); with"
                f" `cells` below the range's size, counts per status over that many buckets"
                f" (at most {cells}).",
                "parameters": [
                    _query("first", "The first index (default 0).", integer(0, default=0)),
                    _query("last", "The last index (default: the mission's last).", integer(0)),
                    _query("cells", "Buckets wanted (default: one per index).", integer(1)),
                ],
                "responses": _responses(200, "TransactionMap", "The map.", 400, 401, 404),
            },
        },
        "/missions/{mission_id}/timeline": {
            "parameters": [MISSION_ID],
            "get": {
                "operationId": "workerTimeline",
                "summary": "The attempts of an index range, each on its instance",
                "description": f"At most {timeline_limit} indexes a call (`next_after`"
                " continues); the mission's instances on the first page.",
                "parameters": [
                    _query(
                        "after",
                        "Transactions after this index (-1: from the first).",
                        integer(-1, default=-1),
                    ),
                    _query(
                        "limit",
                        f"Indexes per page; more than {timeline_limit} count as {timeline_limit}.",
                        integer(1, default=timeline_limit),
                    ),
                ],
                "responses": _responses(200, "Timeline", "The page.", 400, 401, 404),
            },
        },
        "/missions/{mission_id}/outcome": {
            "parameters": [MISSION_ID],
            "get": {
                "operationId": "missionOutcome",
                "summary": "A mission with its result, its receipt and its email once sent",
                "responses": _responses(200, "Outcome", "The mission.", 401, 404),
            },
        },
    }


def build() -> dict[str, Any]:
    """The description, from the models and the routes' contract."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "lighthpc",
            "version": VERSION,
            "description": "A serverless HPC scheduler: submit a mission config, upload its"
            " input, follow its transactions. Deployed stages take only requests signed with"
            " AWS SigV4 (service execute-api) by an IAM principal allowed to invoke the API;"
            " `lighthpc up` serves the same API on 127.0.0.1 without signatures.",
        },
        "servers": [
            {"url": "http://127.0.0.1:8000", "description": "lighthpc up (the local stage)"},
            {
                "url": "https://{api}.execute-api.{region}.amazonaws.com/api",
                "description": "A deployed stage: its stack's EndpointURL",
                "variables": {"api": {"default": "API_ID"}, "region": {"default": "us-east-1"}},
            },
        ],
        "security": [{"sigv4": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "sigv4": {
                    "type": "apiKey",
                    "name": "Authorization",
                    "in": "header",
                    "description": "AWS Signature Version 4 (service execute-api).",
                    "x-amazon-apigateway-authtype": "awsSigv4",
                }
            },
            "schemas": _schemas(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Write chalicelib/openapi.json from `build()`; with --check, only say whether it differs."""
    args = sys.argv[1:] if argv is None else argv
    text = render(build())
    if "--check" in args:
        current = PATH.read_text(encoding="utf-8") if PATH.exists() else ""
        if current != text:
            print(f"{PATH} is out of date: run python -m chalicelib.openapi", file=sys.stderr)
            return 1
        return 0
    PATH.write_text(text, encoding="utf-8")
    print(f"wrote {PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
