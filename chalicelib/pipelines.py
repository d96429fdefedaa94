"""The pipeline API: stages submitted in one request, watched and cancelled as one.

A pipeline is its stages' missions (`chalicelib.stages` makes one feed the next), each carrying
the pipeline's record (`chalicelib.domain.Pipeline`); its id is its first stage's mission id with
`p-` for `m-`, so reading it costs one GetItem per stage and nothing is stored twice. It sends
one email, when every stage has ended (`chalicelib.results.send_pipeline_report`).
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import Any

from chalicelib.auth import LOCAL_CALLER, Caller
from chalicelib.config import PipelineConfig, StageInput, UpstreamInput, parse_pipeline_config
from chalicelib.context import Context
from chalicelib.domain import Mission, Pipeline
from chalicelib.events import send_start_request
from chalicelib.missions import (
    cancel,
    check_input,
    mission_summary,
    new_mission,
    new_mission_id,
    submitted_once,
    upload_view,
    visible,
)
from chalicelib.observability import logger
from chalicelib.results import pipeline_status, transaction_counts
from chalicelib.states import MissionStatus
from chalicelib.store import Conflict, NotFound

PIPELINE_ID = re.compile(r"^p-[0-9]{14}-[0-9a-f]{8}$")
M = MissionStatus


def head_mission_id(pipeline_id: str) -> str:
    """The first stage's mission, which the pipeline's id names."""
    return "m-" + pipeline_id.removeprefix("p-")


def submit_pipeline(
    ctx: Context,
    body: bytes | str | None,
    caller: Caller | None = None,
    idempotency_key: str | None = None,
    lambda_context: Any = None,
) -> dict[str, Any]:
    """Validate every stage, then store them all or none; each stage starts as a mission does
    (its upload, or its upstream's result). Raises ConfigInvalid (nothing written),
    InputNotYours, InputBusy or Conflict, as POST /missions does."""
    caller = caller or Caller(LOCAL_CALLER)
    config = parse_pipeline_config(body, ctx.settings)
    for i, stage in enumerate(config.stages):
        check_input(ctx, stage.config, caller, f"stages.{i}.config.input")
    register = functools.partial(_register, ctx, config, caller)
    return submitted_once(ctx, body, caller, idempotency_key, lambda_context, register)


def _register(ctx: Context, config: PipelineConfig, caller: Caller) -> dict[str, Any]:
    now = ctx.clock()
    head = new_mission_id(now)
    ids = {
        stage.stage: head if i == 0 else new_mission_id(now)
        for i, stage in enumerate(config.stages)
    }
    pipeline = Pipeline(
        pipeline_id="p-" + head.removeprefix("m-"),
        name=config.name,
        stages=tuple(ids.items()),
        notify=config.notify,
        budget_usd=config.budget_usd,
    )
    missions = []
    for stage in config.stages:
        stage_config = stage.config
        if isinstance(stage_config.input, StageInput):
            fed_by = UpstreamInput(mission=ids[stage_config.input.stage])
            stage_config = stage_config.model_copy(update={"input": fed_by})
        missions.append(new_mission(ids[stage.stage], stage_config, caller, now, pipeline))
    ctx.store.missions.create(*missions)
    for mission in missions:
        send_start_request(ctx, mission.mission_id)
    logger.info(
        "pipeline registered",
        extra={"pipeline_id": pipeline.pipeline_id, "stages": len(missions)},
    )
    return {
        "pipeline_id": pipeline.pipeline_id,
        "name": pipeline.name,
        "status": M.AWAITING_INPUT.value,
        "stages": [
            {
                "stage": stage,
                "mission_id": mission.mission_id,
                "status": mission.status.value,
                "upload": upload_view(ctx, mission),
            }
            for (stage, _), mission in zip(pipeline.stages, missions, strict=True)
        ],
    }


def _stages_of(ctx: Context, pipeline_id: str, caller: Caller) -> tuple[Pipeline, list[Mission]]:
    """The pipeline and its stages, if the caller may see it; NotFound (a 404) otherwise."""
    missing = NotFound(f"no pipeline {pipeline_id!r}")
    if not PIPELINE_ID.match(pipeline_id):
        raise missing
    try:
        head = visible(ctx, head_mission_id(pipeline_id), caller)
    except NotFound:
        raise missing from None
    pipeline = head.pipeline
    if pipeline is None or pipeline.pipeline_id != pipeline_id:
        raise missing
    return pipeline, [head, *(ctx.store.missions.get(m) for m in pipeline.mission_ids[1:])]


def live_status(stages: list[Mission]) -> MissionStatus:
    """The pipeline's status: its final one once every stage ended; RUNNING once any began (or
    ended); AWAITING_INPUT before."""
    final = pipeline_status(stages)
    if final is not None:
        return final
    if all(m.status is M.AWAITING_INPUT for m in stages):
        return M.AWAITING_INPUT
    return M.RUNNING


def describe_pipeline(ctx: Context, pipeline_id: str, caller: Caller) -> dict[str, Any]:
    pipeline, stages = _stages_of(ctx, pipeline_id, caller)
    return {
        "pipeline_id": pipeline.pipeline_id,
        "name": pipeline.name,
        "status": live_status(stages).value,
        "notify": pipeline.notify,
        "budget_usd": pipeline.budget_usd,
        "estimated_cost_usd": round(sum(m.estimated_cost for m in stages), 6),
        "notified_at": mission_summary(ctx, stages[0])["notified_at"],
        "stages": [
            {
                "stage": stage,
                **mission_summary(ctx, m),
                "transactions": transaction_counts(m),
                "estimated_cost_usd": round(m.estimated_cost, 6),
                "input_mission": m.upstream,
            }
            for (stage, _), m in zip(pipeline.stages, stages, strict=True)
        ],
    }


def cancel_pipeline(ctx: Context, pipeline_id: str, caller: Caller) -> dict[str, Any]:
    """Cancel every stage that has not ended (a stage that ended stays as it ended). Raises
    NotFound, or Conflict if every stage had ended already."""
    _, stages = _stages_of(ctx, pipeline_id, caller)
    live = [m for m in stages if not m.terminal]
    if not live:
        raise Conflict(f"pipeline {pipeline_id} has ended")
    for m in live:
        # A stage may end meanwhile: one fails when the stage feeding it is cancelled.
        with contextlib.suppress(Conflict):
            cancel(ctx, m.mission_id, caller)
    return describe_pipeline(ctx, pipeline_id, caller)
