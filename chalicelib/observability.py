"""Powertools Logger shared by the handlers and the worker; the mission id is the correlation id."""

from __future__ import annotations

from aws_lambda_powertools import Logger

logger = Logger(service="lighthpc")


def bind_mission(mission_id: str | None) -> None:
    logger.set_correlation_id(mission_id)
    if mission_id is None:
        logger.remove_keys(["mission_id"])
    else:
        logger.append_keys(mission_id=mission_id)
