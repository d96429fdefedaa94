"""lighthpc: the wiring table. Each handler turns its event into a typed call into chalicelib.

Importing this module needs no environment, no network and no AWS: clients, settings and the
store are built on first use (`chalicelib.context.get_context`). Cross-cutting work rides on
Chalice's middleware: Lambda context in every log line, metrics flushed after every invocation,
the caller authenticated once per request; errors carry their own HTTP answer
(`chalicelib.errors.ApiError`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from chalice import Chalice, ConvertToMiddleware, IAMAuthorizer, Response
from chalice.app import CloudWatchEvent, Rate, Request, SQSEvent

from chalicelib import auth, dashboard, missions, openapi, pipelines
from chalicelib.batch import process_sqs_batch
from chalicelib.config import parse_query_int
from chalicelib.context import get_context, in_invocation
from chalicelib.errors import ApiError
from chalicelib.idempotency import HEADER as IDEMPOTENCY_HEADER
from chalicelib.interruptions import on_spot_interruption
from chalicelib.observability import flush_metrics, logger
from chalicelib.results import count_batch, handle_result_object
from chalicelib.scheduler import handle_source_event
from chalicelib.settings import RESULT_QUEUE_NAME, SOURCE_QUEUE_NAME
from chalicelib.sweeper import sweep

app = Chalice(app_name="lighthpc")
# Every route: API Gateway verifies SigV4 (execute-api:Invoke) before Lambda runs. Chalice's local
# gateway admits such routes unchecked, so the app checks the caller as well (chalicelib.auth).
iam = IAMAuthorizer()

SPOT_INTERRUPTION_PATTERN = {
    "source": ["aws.ec2"],
    "detail-type": ["EC2 Spot Instance Interruption Warning"],
}
CALLER = "lighthpc:caller"  # where the authenticated caller waits in the request context

app.register_middleware(ConvertToMiddleware(logger.inject_lambda_context))


@app.middleware("all")
def publish_metrics(event: Any, get_response: Callable[[Any], Any]) -> Any:
    try:
        return get_response(event)
    finally:
        flush_metrics()


@app.middleware("http")
def authenticate(request: Request, get_response: Callable[[Request], Response]) -> Response:
    """Once per request, before any route runs."""
    if request is None:  # not a REST event Chalice recognises: it answers that itself
        return get_response(request)
    try:
        settings = get_context().settings
        principal = auth.authenticate(request.context, settings.stage)
        request.context[CALLER] = auth.caller_of(principal, settings.stage, settings.operators)
    except auth.Unauthenticated as e:
        return _error(e)
    return get_response(request)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    headers = {"Content-Type": "application/json", **(headers or {})}
    return Response(body=body, status_code=status, headers=headers)


def _error(e: ApiError) -> Response:
    return _json(e.STATUS_CODE, e.body(), e.headers())


def answers(status: int) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., Response]]:
    """A route's answer: its dict as JSON with `status`, or an ApiError's own answer."""

    def decorate(view: Callable[..., dict[str, Any]]) -> Callable[..., Response]:
        @functools.wraps(view)
        def answer(*args: Any, **kwargs: Any) -> Response:
            try:
                return _json(status, view(*args, **kwargs))
            except ApiError as e:
                return _error(e)

        return answer

    return decorate


def _int_param(name: str, default: int, minimum: int) -> int:
    query = app.current_request.query_params or {}
    return parse_query_int(name, query.get(name), default, minimum)


def _has_param(name: str) -> bool:
    return name in (app.current_request.query_params or {})


# ---- REST API ("MissionCfg") -------------------------------------------------------------


@app.route("/missions", methods=["POST"], content_types=["application/json"], authorizer=iam)
@answers(201)
def create_mission() -> dict[str, Any]:
    request = app.current_request
    key = request.headers.get(IDEMPOTENCY_HEADER)
    caller = request.context[CALLER]
    return missions.submit(get_context(), request.raw_body, caller, key, app.lambda_context)


@app.route("/missions", methods=["GET"], authorizer=iam)
@answers(200)
def list_missions() -> dict[str, Any]:
    return missions.list_missions(get_context(), app.current_request.context[CALLER])


@app.route("/me", methods=["GET"], authorizer=iam)
@answers(200)
def who_am_i() -> dict[str, Any]:
    return missions.caller_view(app.current_request.context[CALLER])


@app.route("/missions/{mission_id}", methods=["GET"], authorizer=iam)
@answers(200)
def get_mission(mission_id: str) -> dict[str, Any]:
    return missions.describe(get_context(), mission_id, app.current_request.context[CALLER])


@app.route("/missions/{mission_id}", methods=["DELETE"], authorizer=iam)
@answers(200)
def cancel_mission(mission_id: str) -> dict[str, Any]:
    return missions.cancel(get_context(), mission_id, app.current_request.context[CALLER])


@app.route("/missions/{mission_id}/transactions", methods=["GET"], authorizer=iam)
@answers(200)
def get_transactions(mission_id: str) -> dict[str, Any]:
    after = _int_param("after", -1, minimum=-1)
    limit = min(_int_param("limit", missions.PAGE_LIMIT, minimum=1), missions.PAGE_LIMIT)
    caller = app.current_request.context[CALLER]
    return missions.transactions(get_context(), mission_id, caller, after=after, limit=limit)


@app.route("/pipelines", methods=["POST"], content_types=["application/json"], authorizer=iam)
@answers(201)
def create_pipeline() -> dict[str, Any]:
    request = app.current_request
    key = request.headers.get(IDEMPOTENCY_HEADER)
    caller = request.context[CALLER]
    return pipelines.submit_pipeline(
        get_context(), request.raw_body, caller, key, app.lambda_context
    )


@app.route("/pipelines/{pipeline_id}", methods=["GET"], authorizer=iam)
@answers(200)
def get_pipeline(pipeline_id: str) -> dict[str, Any]:
    caller = app.current_request.context[CALLER]
    return pipelines.describe_pipeline(get_context(), pipeline_id, caller)


@app.route("/pipelines/{pipeline_id}", methods=["DELETE"], authorizer=iam)
@answers(200)
def cancel_pipeline(pipeline_id: str) -> dict[str, Any]:
    caller = app.current_request.context[CALLER]
    return pipelines.cancel_pipeline(get_context(), pipeline_id, caller)


@app.route(openapi.ROUTE, methods=["GET"], authorizer=iam)
@answers(200)
def get_openapi() -> dict[str, Any]:
    """This API's OpenAPI description (chalicelib/openapi.json); behind SigV4 like every route."""
    return openapi.document()


# The dashboard's reads (chalicelib.dashboard): each bounded per call at any mission size.
@app.route("/overview", methods=["GET"], authorizer=iam)
@answers(200)
def get_overview() -> dict[str, Any]:
    status = (app.current_request.query_params or {}).get("status")
    return dashboard.overview(get_context(), app.current_request.context[CALLER], status)


@app.route("/missions/{mission_id}/map", methods=["GET"], authorizer=iam)
@answers(200)
def get_transaction_map(mission_id: str) -> dict[str, Any]:
    first = _int_param("first", 0, minimum=0)
    last = _int_param("last", -1, minimum=0) if _has_param("last") else None
    cells = _int_param("cells", 0, minimum=1) if _has_param("cells") else None
    caller = app.current_request.context[CALLER]
    return dashboard.transaction_map(get_context(), mission_id, caller, first, last, cells)


@app.route("/missions/{mission_id}/timeline", methods=["GET"], authorizer=iam)
@answers(200)
def get_timeline(mission_id: str) -> dict[str, Any]:
    after = _int_param("after", -1, minimum=-1)
    limit = min(
        _int_param("limit", dashboard.TIMELINE_RANGE_LIMIT, minimum=1),
        dashboard.TIMELINE_RANGE_LIMIT,
    )
    caller = app.current_request.context[CALLER]
    return dashboard.timeline(get_context(), mission_id, caller, after=after, limit=limit)


@app.route("/missions/{mission_id}/outcome", methods=["GET"], authorizer=iam)
@answers(200)
def get_outcome(mission_id: str) -> dict[str, Any]:
    return dashboard.outcome(get_context(), mission_id, app.current_request.context[CALLER])


# ---- Events ------------------------------------------------------------------------------


@app.on_sqs_message(queue=SOURCE_QUEUE_NAME, batch_size=10, name="light_scheduler")
def light_scheduler(event: SQSEvent) -> dict[str, Any]:
    return process_sqs_batch(get_context(), event.to_dict(), handle_source_event)


@app.on_sqs_message(queue=RESULT_QUEUE_NAME, batch_size=10, name="result_processor")
def result_processor(event: SQSEvent) -> dict[str, Any]:
    ctx = in_invocation(get_context(), event.context)  # a long merge stops in time, resumes
    return process_sqs_batch(ctx, event.to_dict(), handle_result_object, prepare=count_batch)


@app.schedule(Rate(1, unit=Rate.MINUTES), name="sweeper")
def sweeper(event: CloudWatchEvent) -> dict[str, Any]:
    return asdict(sweep(in_invocation(get_context(), event.context)))


@app.on_cw_event(SPOT_INTERRUPTION_PATTERN, name="spot_interruption")
def spot_interruption(event: CloudWatchEvent) -> dict[str, Any]:
    handed = on_spot_interruption(get_context(), event.detail["instance-id"])
    return {"handed_back": handed}
