"""Powertools Logger and Metrics, shared by the handlers and the worker.

The mission id is the logs' correlation id. Metrics are CloudWatch EMF lines on stdout, what an
operator watches (transactions counted, retries, relaunches, sweeps, merge seconds, emails);
app.py flushes them after every invocation (`flush_metrics`), the worker when it ends.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

SERVICE = "lighthpc"
logger = Logger(service=SERVICE)
metrics = Metrics(namespace=SERVICE, service=SERVICE)

__all__ = ["MetricUnit", "bind_mission", "count", "flush_metrics", "logger", "metrics"]


def bind_mission(mission_id: str | None) -> None:
    logger.set_correlation_id(mission_id)
    if mission_id is None:
        logger.remove_keys(["mission_id"])
    else:
        logger.append_keys(mission_id=mission_id)


def count(name: str, value: float = 1) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def flush_metrics() -> None:
    """Publish what this invocation recorded; nothing (and no warning) if it recorded nothing.

    Cleared either way: with POWERTOOLS_METRICS_DISABLED, Powertools neither prints nor clears,
    and a warm Lambda would pile values up until Powertools' 100-value limit printed them all.
    """
    if metrics.metric_set:
        metrics.flush_metrics()
        metrics.clear_metrics()
