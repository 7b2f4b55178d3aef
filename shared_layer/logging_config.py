"""JSON-lines logging that Cloud Logging understands, configured once per process.

Every line carries `severity`, `message`, the logger name, the function's name and, inside a
request or a task, `logging.googleapis.com/trace` (from `traceparent` or
`X-Cloud-Trace-Context`) and the execution id as labels. Structured fields go in as keyword
arguments on the service loggers (`get_api_logger().info("...", user_id=...)`) or as `extra`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sys
import time
import traceback
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Protocol

_context: ContextVar[dict[str, str] | None] = ContextVar("stratus_log_context", default=None)
_configured = False

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_TRACEPARENT = re.compile(
    r"^[0-9a-f]{2}-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-[0-9a-f]{2}$"
)
SECURITY_LABEL = "security_event"


class HeaderLookup(Protocol):
    """Anything with a `get` like werkzeug's case-insensitive `Headers`, or a plain dict."""

    def get(self, key: str, default: str) -> str: ...


def trace_from_headers(headers: HeaderLookup) -> tuple[str | None, str | None]:
    """The (trace id, span id) of a request, from W3C `traceparent` or Google's header.

    Both ids come back as lowercase hex, as Cloud Logging wants them: the span in
    `X-Cloud-Trace-Context` (`TRACE/SPAN;o=1`) is decimal and is converted.
    """
    match = _TRACEPARENT.match(headers.get("traceparent", "").strip().lower())
    if match and match["trace"] != "0" * 32 and match["span"] != "0" * 16:
        return match["trace"], match["span"]
    cloud = headers.get("X-Cloud-Trace-Context", "").strip()
    trace, _, rest = cloud.partition("/")
    if not re.fullmatch(r"[0-9a-fA-F]{32}", trace):
        return None, None
    span = rest.split(";")[0]
    span_hex = f"{int(span):016x}" if span.isdigit() and 0 < int(span) < 2**64 else None
    return trace.lower(), span_hex


def request_log_fields(headers: HeaderLookup) -> dict[str, str | None]:
    """Trace, span and execution id of a request or a pushed event, for `log_context`.

    Without trace headers (a local call) a random trace id is made up, so that the lines of one
    request or task still share one; functions-framework sets `Function-Execution-Id` when the
    platform did not. The id need not be unguessable, so it comes from `random`, not from the
    OS: `os.urandom` is a system call that lets go of the GIL on every request.
    """
    trace, span = trace_from_headers(headers)
    execution_id = headers.get("Function-Execution-Id", "").strip() or None
    trace = trace or f"{random.getrandbits(128):032x}"
    return {"trace": trace, "span": span, "execution_id": execution_id}


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Add fields (trace, span, execution_id, function, …) to every line logged inside."""
    current = dict(_context.get() or {})
    current.update({k: v for k, v in fields.items() if v})
    token = _context.set(current)
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, in the shape Cloud Logging reads from stdout."""

    def format(self, record: logging.LogRecord) -> str:
        fields = vars(record)
        extras = {  # in a stable order
            key: fields[key]
            for key in sorted(fields.keys() - _STANDARD_ATTRS)
            if not key.startswith("_")
        }
        stack = "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else None
        return _json_line(
            record.levelname,
            record.getMessage(),
            record.created,
            record.name,
            extras,
            (record.pathname, record.lineno, record.funcName),
            stack,
        )


def _json_line(
    level: str,
    message: str,
    created: float,
    logger_name: str,
    extras: dict[str, Any],
    source: tuple[str, int, str | None],
    stack: str | None = None,
) -> str:
    """The line of one record, with the request's or task's context, as JSON."""
    context = _context.get() or {}
    entry: dict[str, Any] = {
        "severity": level if level != "WARN" else "WARNING",
        "message": message,
        "time": datetime.fromtimestamp(created, UTC).isoformat(),
        "logger": logger_name,
    }
    labels = {"function": context.get("function") or os.environ.get("K_SERVICE", "stratus")}
    if context.get("execution_id"):
        labels["execution_id"] = context["execution_id"]
    for key, value in extras.items():
        if key == "labels" and isinstance(value, dict):
            labels.update({str(k): str(v) for k, v in value.items()})
        else:  # a field never replaces severity, message, time or logger
            entry[f"{key}_" if key in entry else key] = value
    entry["logging.googleapis.com/labels"] = labels
    trace = context.get("trace")
    if trace:
        project = os.environ.get("GOOGLE_CLOUD_PROJECT")
        entry["logging.googleapis.com/trace"] = (
            f"projects/{project}/traces/{trace}" if project else trace
        )
        if context.get("span"):
            entry["logging.googleapis.com/spanId"] = context["span"]
    file, line, function = source
    entry["logging.googleapis.com/sourceLocation"] = {
        "file": file,
        "line": line,
        "function": function,
    }
    if stack:
        entry["stack_trace"] = stack
    return _ENCODER.encode(entry)


_ENCODER = json.JSONEncoder(default=str)  # what json.dumps(..., default=str) builds per call


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stdout` is at the time (a test's capture, a worker's pipe)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)

    def write_line(self, line: str) -> None:
        """A line formatted already, written as `emit` writes a record's."""
        with self.lock:  # type: ignore[union-attr]  # made by createLock()
            self.stream = sys.stdout
            self.stream.write(line + self.terminator)
            self.stream.flush()


_handler: _StdoutHandler | None = None  # configure_logging's


def configure_logging(level: str | None = None) -> None:
    """Send JSON lines to stdout; idempotent, so every function may call it at import."""
    global _configured, _handler
    if _configured:
        return
    handler = _handler = _StdoutHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _StdoutHandler)]
    root.addHandler(handler)
    wanted = (level or os.environ.get("LOG_LEVEL") or "INFO").strip().upper()
    valid = wanted in logging.getLevelNamesMapping()
    root.setLevel(wanted if valid else logging.INFO)
    if not valid:  # a typo in LOG_LEVEL must not stop every function from starting
        logging.getLogger(__name__).warning("unknown LOG_LEVEL %r; using INFO", wanted)
    _configured = True


class StructuredLogger(logging.LoggerAdapter[logging.Logger]):
    """`logger.info("...", user_id=..., endpoint=...)`: keyword fields become JSON fields."""

    _reserved = frozenset({"exc_info", "stack_info", "stacklevel", "extra"})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k not in self._reserved}
        merged = {**(self.extra or {}), **kwargs.get("extra", {}), **fields}
        # `name=`, `module=`… would make logging raise (they are LogRecord attributes).
        kwargs["extra"] = {(f"{k}_" if k in _STANDARD_ATTRS else k): v for k, v in merged.items()}
        return msg, kwargs


def get_logger(name: str) -> StructuredLogger:
    return StructuredLogger(logging.getLogger(name), {})


def get_api_logger() -> StructuredLogger:
    return get_logger("stratus.api")


def get_agent_logger() -> StructuredLogger:
    return get_logger("stratus.agent")


def get_web_logger() -> StructuredLogger:
    return get_logger("stratus.web")


def get_shared_logger() -> StructuredLogger:
    return get_logger("stratus.shared")


def get_security_logger() -> StructuredLogger:
    return get_logger("stratus.security")


_api_logger = logging.getLogger("stratus.api")


def log_api_call(
    endpoint: str, method: str, status: int, duration_ms: float, user_id: object | None = None
) -> None:
    """The line `Router.dispatch` writes for every request. When configure_logging's handler
    is the only one it would reach, the line is made and written here, as the handler would
    write it, without a LogRecord or a walk through the handlers: in a loaded instance that
    machinery cost more than the rest of a small request's own work. Otherwise (another
    handler, a filter: a test's capture, say) it goes through logging as any line does."""
    if not _api_logger.isEnabledFor(logging.INFO):
        return
    fields = {  # in the order the formatter sorts extras into
        "duration_ms": round(duration_ms, 2),
        "endpoint": endpoint,
        "method": method,
        "status": status,
        "user_id": str(user_id) if user_id else None,
    }
    message = f"{method} {endpoint} -> {status}"
    code = log_api_call.__code__
    handler = _sole_handler()
    if handler is not None:
        source = (code.co_filename, code.co_firstlineno, code.co_name)
        line = _json_line("INFO", message, time.time(), _api_logger.name, fields, source)
        try:
            handler.write_line(line)
            return
        except Exception:  # noqa: S110 (logging's own path reports it, below)
            pass
    _api_logger.handle(
        _api_logger.makeRecord(
            _api_logger.name,
            logging.INFO,
            code.co_filename,
            code.co_firstlineno,
            message,
            (),
            None,
            code.co_name,
            fields,
        )
    )


def _sole_handler() -> _StdoutHandler | None:
    """configure_logging's handler, if an INFO line of `stratus.api` would reach it and no
    other handler or filter."""
    handler = _handler
    if handler is None or handler.filters or handler.level > logging.INFO:
        return None
    if _api_logger.filters:
        return None
    logger: logging.Logger | None = _api_logger
    while logger is not None:
        if logger is logging.root:
            handlers = logger.handlers
            return handler if len(handlers) == 1 and handlers[0] is handler else None
        if logger.handlers or not logger.propagate:
            return None
        logger = logger.parent
    return None


def log_task_execution(
    task: object, status: str, duration_ms: float, user_id: object | None = None
) -> None:
    get_agent_logger().info(
        f"task {task} {status}",
        task_id=str(task),
        status=status,
        duration_ms=round(duration_ms, 2),
        user_id=str(user_id) if user_id else None,
    )


def log_security_event(event: str, **fields: Any) -> None:
    """A line a log-based alert can match on: `labels.security_event`."""
    get_security_logger().warning(event, labels={SECURITY_LABEL: event}, **fields)
