"""The one place that reads the environment.

Lambda gets these variables from the stage in `.chalice/config.json`; the worker gets them from
its user data (or from the local fleet). Nothing here runs at import time except the queue names
that Chalice's decorators need while `app.py` is being imported, and those have defaults, so
importing the app needs no environment at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

# Chalice binds SQS handlers to queue *names* when app.py is imported (and when it is packaged),
# so these two are module constants. They follow the stage named by LIGHTHPC_STAGE (default
# "local"); `make package STAGE=prod` sets it.
_IMPORT_STAGE = os.environ.get("LIGHTHPC_STAGE", "local")
SOURCE_QUEUE_NAME = f"lighthpc-{_IMPORT_STAGE}-source-events"
RESULT_QUEUE_NAME = f"lighthpc-{_IMPORT_STAGE}-result-events"


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _words(value: str | None) -> tuple[str, ...]:
    return tuple(w for w in (value or "").replace(",", " ").split() if w)


def _default_operators(stage: str) -> str:
    """Deployed stages: every session of the role lighthpc-<stage>-operator, in any account the
    API trusts (API Gateway admits only principals its resource policy and IAM allow)."""
    return "" if stage == "local" else f"arn:aws:iam::*:role/lighthpc-{stage}-operator"


@dataclass(frozen=True)
class Settings:
    stage: str
    region: str
    mission_table: str
    transaction_table: str
    input_table: str
    idempotency_table: str
    source_bucket: str
    result_bucket: str
    source_queue: str
    topic_arn: str
    launch_template: str
    # Subnets the fleet may launch workers in (a VPC without default subnets needs them); empty:
    # the default VPC's default subnets.
    worker_subnets: tuple[str, ...]
    # Security policy for argv templates: the local stage runs anything, deployed stages only
    # programs on this allow list (plus the built-in apps).
    allow_inline_argv: bool
    allowed_programs: tuple[str, ...]
    # Principals (fnmatch globs over IAM ARNs; an assumed-role session also matches as its role)
    # that see and cancel every mission. Everyone else sees only the missions it submitted.
    operators: tuple[str, ...]
    # Guard rails that bound what one mission may ask for.
    max_transactions: int
    max_instances: int
    max_input_bytes: int
    # Whether the SQS event source mapping has ReportBatchItemFailures (set by the deployment
    # template). Without it a partial-batch answer would silently drop the failed records, so
    # the handler raises instead and the whole batch is retried.
    partial_batch_responses: bool
    # Worker side: where instance metadata is served (the local runtime serves one per worker),
    # how long a claim holds without a heartbeat, and how often Spot notices are polled.
    imds_url: str
    lease_seconds: int
    spot_poll_seconds: float
    # result_processor's own queue: a merge that must continue in a new invocation asks there.
    result_queue: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        stage = e.get("LIGHTHPC_STAGE", "local")
        prefix = f"lighthpc-{stage}"
        return cls(
            stage=stage,
            region=e.get("AWS_REGION") or e.get("AWS_DEFAULT_REGION") or "us-east-1",
            mission_table=e.get("MISSION_TABLE", f"{prefix}-missions"),
            transaction_table=e.get("TRANSACTION_TABLE", f"{prefix}-transactions"),
            input_table=e.get("INPUT_TABLE", f"{prefix}-inputs"),
            idempotency_table=e.get("IDEMPOTENCY_TABLE", f"{prefix}-idempotency"),
            source_bucket=e.get("SOURCE_BUCKET", f"{prefix}-source"),
            result_bucket=e.get("RESULT_BUCKET", f"{prefix}-results"),
            source_queue=e.get("SOURCE_QUEUE", f"{prefix}-source-events"),
            topic_arn=e.get("TOPIC_ARN", ""),
            launch_template=e.get("WORKER_LAUNCH_TEMPLATE", f"{prefix}-worker"),
            worker_subnets=_words(e.get("WORKER_SUBNETS")),
            allow_inline_argv=_flag(e.get("ALLOW_INLINE_ARGV"), default=stage == "local"),
            allowed_programs=_words(e.get("ALLOWED_PROGRAMS")),
            operators=_words(e.get("OPERATORS", _default_operators(stage))),
            max_transactions=int(e.get("MAX_TRANSACTIONS", "100000")),
            max_instances=int(e.get("MAX_INSTANCES", "1000")),
            max_input_bytes=int(e.get("MAX_INPUT_BYTES", str(5 * 1024**3))),
            partial_batch_responses=_flag(e.get("SQS_PARTIAL_BATCH_RESPONSES"), default=False),
            imds_url=e.get("LIGHTHPC_IMDS_URL", "http://169.254.169.254"),
            lease_seconds=int(e.get("LEASE_SECONDS", "90")),
            spot_poll_seconds=float(e.get("SPOT_POLL_SECONDS", "5")),
            result_queue=e.get("RESULT_QUEUE", f"{prefix}-result-events"),
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()


def reset_settings() -> None:
    """Forget the cached settings (tests change the environment between cases)."""
    get_settings.cache_clear()
