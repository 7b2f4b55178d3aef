"""task_runner: runs the task a Pub/Sub message names, delivered by Eventarc as a CloudEvent.

Returning acknowledges the message; raising asks Pub/Sub to deliver it again. So only a
transient failure (`UpstreamError`, with attempts left) raises; a finished, running or missing
task, and an event that names no task at all, are logged and acknowledged.
"""

from __future__ import annotations

import logging
import secrets

import flask
import functions_framework
from cloudevents.http import CloudEvent

from shared_layer.errors import UpstreamError
from shared_layer.eventarc import NotATaskMessage, parse_task_event
from shared_layer.http import answer_framework_errors_with_problems
from shared_layer.logging_config import configure_logging, log_context, trace_from_headers
from shared_layer.services.task_execution import run_task

configure_logging()
logger = logging.getLogger(__name__)
answer_framework_errors_with_problems(cloud_events=True)


def _trace(event: CloudEvent) -> tuple[str | None, str | None]:
    """The trace of the event (its `traceparent` extension), else of the push request."""
    traceparent = event.get("traceparent")
    if isinstance(traceparent, str):
        trace, span = trace_from_headers({"traceparent": traceparent})
        if trace:
            return trace, span
    if not flask.has_request_context():
        return None, None
    return trace_from_headers(flask.request.headers)


@functions_framework.cloud_event
def task_runner(event: CloudEvent) -> None:
    trace, span = _trace(event)
    execution_id = (
        flask.request.headers.get("Function-Execution-Id") if flask.has_request_context() else None
    )
    # No trace came (a local push from a worker thread): make one, so the run's lines share it.
    trace = trace or secrets.token_hex(16)
    with log_context(function="task_runner", trace=trace, span=span, execution_id=execution_id):
        try:
            delivery = parse_task_event(event["type"], event.get_data())
        except NotATaskMessage as exc:
            logger.warning(
                "acknowledged event %s without running anything: %s",
                event["id"],
                exc,
                extra={"event_id": event["id"], "event_type": event["type"]},
            )
            return
        extra = {"task_id": str(delivery.task_id), "message_id": delivery.message_id}
        try:
            outcome = run_task(delivery.task_id)
        except UpstreamError as exc:
            logger.warning("task %s will be retried: %s", delivery.task_id, exc.detail, extra=extra)
            raise
        logger.info("task %s: %s", delivery.task_id, outcome, extra={**extra, "outcome": outcome})
