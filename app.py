"""lighthpc: the wiring table. Each handler turns its event into a typed call into chalicelib.

Importing this module needs no environment, no network and no AWS: clients, settings and the
store are built on first use (`chalicelib.context.get_context`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from chalice import Chalice, IAMAuthorizer, Response
from chalice.app import CloudWatchEvent, Rate, SQSEvent

from chalicelib import auth, missions
from chalicelib.batch import process_sqs_batch
from chalicelib.config import ConfigInvalid, FieldError, RequestInvalid
from chalicelib.context import get_context
from chalicelib.idempotency import HEADER as IDEMPOTENCY_HEADER
from chalicelib.interruptions import on_spot_interruption
from chalicelib.results import handle_result_object
from chalicelib.scheduler import handle_source_event
from chalicelib.settings import RESULT_QUEUE_NAME, SOURCE_QUEUE_NAME
from chalicelib.store import Conflict, InputBusy, NotFound
from chalicelib.sweeper import sweep

app = Chalice(app_name="lighthpc")
# Every route: API Gateway verifies SigV4 (execute-api:Invoke) before Lambda runs. Chalice's local
# gateway admits such routes unchecked, so `_answer` checks the caller as well (chalicelib.auth).
iam = IAMAuthorizer()

SPOT_INTERRUPTION_PATTERN = {
    "source": ["aws.ec2"],
    "detail-type": ["EC2 Spot Instance Interruption Warning"],
}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    headers = {"Content-Type": "application/json", **(headers or {})}
    return Response(body=body, status_code=status, headers=headers)


def _caller() -> str:
    """The authenticated caller of the current request; raises auth.Unauthenticated."""
    return auth.authenticate(app.current_request.context, get_context().settings.stage)


def _answer(status: int, call: Callable[[], dict[str, Any]]) -> Response:
    """Authenticate, then run one call into chalicelib; errors become the documented answers."""
    try:
        _caller()
        return _json(status, call())
    except auth.Unauthenticated as e:
        # 401, not 403: the request carries no credentials at all (RFC 9110 section 15.5.2).
        # A 401 from here, unlike API Gateway's own 403s, also tells the operator that a
        # request reached Lambda without passing the route's IAM authorizer.
        body = {"error": "authentication required", "reason": str(e), "stage": e.stage}
        return _json(401, body, {"WWW-Authenticate": auth.SIGV4_SCHEME})
    except ConfigInvalid as e:
        fields = [{"field": err.field, "reason": err.reason} for err in e.errors]
        return _json(400, {"error": e.summary, "fields": fields})
    except NotFound as e:
        return _json(404, {"error": str(e)})
    except InputBusy as e:
        return _json(409, {"error": str(e), "mission_id": e.mission_id})
    except Conflict as e:
        return _json(409, {"error": str(e)})


def _int_param(params: dict[str, str], name: str, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as e:
        raise RequestInvalid([FieldError(name, "must be an integer")]) from e


# ---- REST API ("MissionCfg") -------------------------------------------------------------


@app.route("/missions", methods=["POST"], content_types=["application/json"], authorizer=iam)
def create_mission() -> Response:
    request = app.current_request
    key = request.headers.get(IDEMPOTENCY_HEADER)
    return _answer(
        201,
        lambda: missions.submit(
            get_context(), request.raw_body, _caller(), key, app.lambda_context
        ),
    )


@app.route("/missions", methods=["GET"], authorizer=iam)
def list_missions() -> Response:
    return _answer(200, lambda: missions.list_missions(get_context()))


@app.route("/missions/{mission_id}", methods=["GET"], authorizer=iam)
def get_mission(mission_id: str) -> Response:
    return _answer(200, lambda: missions.describe(get_context(), mission_id))


@app.route("/missions/{mission_id}", methods=["DELETE"], authorizer=iam)
def cancel_mission(mission_id: str) -> Response:
    return _answer(200, lambda: missions.cancel(get_context(), mission_id))


@app.route("/missions/{mission_id}/transactions", methods=["GET"], authorizer=iam)
def get_transactions(mission_id: str) -> Response:
    params = app.current_request.query_params or {}
    return _answer(
        200,
        lambda: missions.transactions(
            get_context(),
            mission_id,
            after=_int_param(params, "after", -1),
            limit=min(_int_param(params, "limit", missions.PAGE_LIMIT), missions.PAGE_LIMIT),
        ),
    )


# ---- Events ------------------------------------------------------------------------------


@app.on_sqs_message(queue=SOURCE_QUEUE_NAME, batch_size=10, name="light_scheduler")
def light_scheduler(event: SQSEvent) -> dict[str, Any]:
    return process_sqs_batch(get_context(), event.to_dict(), handle_source_event)


@app.on_sqs_message(queue=RESULT_QUEUE_NAME, batch_size=10, name="result_processor")
def result_processor(event: SQSEvent) -> dict[str, Any]:
    return process_sqs_batch(get_context(), event.to_dict(), handle_result_object)


@app.schedule(Rate(1, unit=Rate.MINUTES), name="sweeper")
def sweeper(event: CloudWatchEvent) -> dict[str, Any]:
    return asdict(sweep(get_context()))


@app.on_cw_event(SPOT_INTERRUPTION_PATTERN, name="spot_interruption")
def spot_interruption(event: CloudWatchEvent) -> dict[str, Any]:
    handed = on_spot_interruption(get_context(), event.detail["instance-id"])
    return {"handed_back": handed}
