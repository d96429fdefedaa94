"""SQS batches through Powertools' BatchProcessor: each record on its own, failures reported.

Chalice 1.34 cannot switch on ReportBatchItemFailures for its event source mapping, and without
it Lambda treats a returned partial-batch answer as success and deletes the failed records. So
unless the stage says the mapping reports item failures (the deployment template adds it), a
failed record raises, the whole batch is retried, and the idempotent handlers absorb the repeats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from chalicelib.context import Context
from chalicelib.events import SourceEvent, parse_queue_body
from chalicelib.observability import bind_mission, logger


class BatchFailed(RuntimeError):
    pass


def process_sqs_batch(
    ctx: Context,
    event: dict[str, Any],
    handle: Callable[[Context, SourceEvent], None],
    prepare: Callable[[Context, list[SourceEvent]], set[SourceEvent]] | None = None,
) -> dict[str, Any]:
    """Each record's events through `handle`; with `prepare`, the whole batch's events first
    (those it returns are done, and skipped). A record that cannot be parsed is left to its
    own handling, which reports it failed."""
    records = event.get("Records", [])
    done: set[SourceEvent] = set()
    if prepare is not None:
        items: list[SourceEvent] = []
        for record in records:
            try:
                items += parse_queue_body(record.get("body", ""))
            except Exception:  # noqa: S112 - reported by its own handling, below
                continue
        done = prepare(ctx, items)

    def record_handler(record: SQSRecord) -> None:
        for item in parse_queue_body(record.body):
            if item in done:
                continue
            bind_mission(None)
            handle(ctx, item)

    processor = BatchProcessor(event_type=EventType.SQS)
    with processor(records=records, handler=record_handler):
        processor.process()
    response = processor.response()
    failures = response.get("batchItemFailures", [])
    if failures:
        for _, exception, _ in processor.exceptions:
            logger.error("record failed", extra={"error": repr(exception)})
        if not ctx.settings.partial_batch_responses:
            raise BatchFailed(f"{len(failures)} of {len(records)} records failed")
    return response
