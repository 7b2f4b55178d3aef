"""JSON log lines as Cloud Logging reads them: fields, trace, labels, secrets kept out."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shared_layer import logging_config
from shared_layer.config import get_settings
from shared_layer.logging_config import (
    JsonFormatter,
    configure_logging,
    get_agent_logger,
    get_api_logger,
    log_api_call,
    log_context,
    log_security_event,
    log_task_execution,
    request_log_fields,
    trace_from_headers,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
PASSWORD = "Corr3ct-horse-battery"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A JsonFormatter handler on the root logger, writing into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(level)


def entries(text: str) -> list[dict[str, Any]]:
    """Every line of `text` parsed as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def stdout_entries(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return entries(capsys.readouterr().out)


def one(found: list[dict[str, Any]], message: str) -> dict[str, Any]:
    matching = [e for e in found if e["message"] == message]
    assert len(matching) == 1, [e["message"] for e in found]
    return matching[0]


# -- the line ---------------------------------------------------------------------------------


def test_line_has_severity_message_time_logger_and_source(stream):
    logging.getLogger("stratus.test").warning("disk at %d%%", 91)

    [entry] = entries(stream.getvalue())

    assert entry["severity"] == "WARNING"
    assert entry["message"] == "disk at 91%"
    assert entry["logger"] == "stratus.test"
    assert entry["time"].endswith("+00:00")
    assert entry["logging.googleapis.com/sourceLocation"]["function"] == (
        "test_line_has_severity_message_time_logger_and_source"
    )


@pytest.mark.parametrize(
    ("level", "severity"),
    [(logging.DEBUG, None), (logging.INFO, "INFO"), (logging.ERROR, "ERROR")],
)
def test_severity_follows_the_level_and_debug_is_filtered_at_info(stream, level, severity):
    logging.getLogger("stratus.test").log(level, "event")

    found = entries(stream.getvalue())

    assert [e["severity"] for e in found] == ([severity] if severity else [])


def test_keyword_fields_become_json_fields(stream):
    get_api_logger().info("charged", user_id="u-1", amount_cents=1299, tags=["a", "b"])

    [entry] = entries(stream.getvalue())

    assert entry["user_id"] == "u-1"
    assert entry["amount_cents"] == 1299
    assert entry["tags"] == ["a", "b"]
    assert entry["logger"] == "stratus.api"


def test_field_named_like_a_record_attribute_is_kept_not_a_crash(stream):
    get_agent_logger().info("renamed", name="agent-7", module="planner", severity="fake")

    [entry] = entries(stream.getvalue())

    assert entry["name_"] == "agent-7"
    assert entry["module_"] == "planner"
    assert entry["severity"] == "INFO"
    assert entry["severity_"] == "fake"


def test_values_json_cannot_encode_are_written_as_text(stream):
    import uuid

    user = uuid.UUID("6f1c3d3e-8a0b-4c55-9d3e-2b1f0c9a7e11")
    get_api_logger().info("typed", user_id=user)

    assert entries(stream.getvalue())[0]["user_id"] == str(user)


def test_log_api_call_and_log_task_execution_carry_their_fields(stream):
    log_api_call("/agents", "POST", 201, 12.3456, user_id="u-1")
    log_task_execution("t-1", "succeeded", 950.0, user_id=None)

    api, task = entries(stream.getvalue())

    assert api["message"] == "POST /agents -> 201"
    assert (api["endpoint"], api["method"], api["status"]) == ("/agents", "POST", 201)
    assert api["duration_ms"] == 12.35
    assert api["user_id"] == "u-1"
    assert (task["task_id"], task["status"], task["user_id"]) == ("t-1", "succeeded", None)


def test_security_event_carries_the_label_alerts_match_on(stream):
    log_security_event("refresh_token_reuse", user_id="u-9")

    [entry] = entries(stream.getvalue())

    assert entry["severity"] == "WARNING"
    assert entry["logging.googleapis.com/labels"]["security_event"] == "refresh_token_reuse"
    assert entry["user_id"] == "u-9"


def test_exception_is_logged_with_its_stack_trace(stream):
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logging.getLogger("stratus.test").exception("division failed")

    [entry] = entries(stream.getvalue())

    assert entry["severity"] == "ERROR"
    assert entry["stack_trace"].startswith("Traceback")
    assert "ZeroDivisionError: division by zero" in entry["stack_trace"]


def test_logged_settings_show_no_secret_values(stream, settings_env):
    settings_env(OPENAI_API_KEY="sk-never-in-logs-123", STRIPE_WEBHOOK_SECRET="whsec_hidden_456")
    settings = get_settings()

    get_api_logger().info("settings %s", settings, settings=settings, key=settings.openai_api_key)

    text = stream.getvalue()
    assert "**********" in text
    for secret in ("sk-never-in-logs-123", "whsec_hidden_456", "test-secret-xxxx"):
        assert secret not in text


# -- context: trace, span, function, execution id ---------------------------------------


def test_context_adds_trace_span_and_labels_and_is_restored(stream, monkeypatch):
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    log = logging.getLogger("stratus.test")

    with log_context(function="agents", execution_id="exec-1", trace=TRACE, span=SPAN):
        with log_context(function="inner", execution_id=None):
            log.info("inner")
        log.info("outer")
    log.info("after")

    inner, outer, after = entries(stream.getvalue())
    assert inner["logging.googleapis.com/trace"] == TRACE
    assert inner["logging.googleapis.com/spanId"] == SPAN
    assert inner["logging.googleapis.com/labels"]["execution_id"] == "exec-1"  # None kept outer
    assert outer["logging.googleapis.com/labels"] == {
        "function": "agents",
        "execution_id": "exec-1",
    }
    assert "logging.googleapis.com/trace" not in after
    assert "execution_id" not in after["logging.googleapis.com/labels"]


def test_trace_is_qualified_with_google_cloud_project(stream, monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "stratus-prod")

    with log_context(trace=TRACE):
        logging.getLogger("stratus.test").info("traced")

    [entry] = entries(stream.getvalue())
    assert entry["logging.googleapis.com/trace"] == f"projects/stratus-prod/traces/{TRACE}"


def test_function_label_falls_back_to_k_service(stream, monkeypatch):
    monkeypatch.setenv("K_SERVICE", "billing")

    logging.getLogger("stratus.test").info("no context")

    [entry] = entries(stream.getvalue())
    assert entry["logging.googleapis.com/labels"]["function"] == "billing"


def test_trace_from_w3c_traceparent():
    assert trace_from_headers({"traceparent": f"00-{TRACE.upper()}-{SPAN}-01"}) == (TRACE, SPAN)


def test_trace_from_x_cloud_trace_context_converts_the_decimal_span_to_hex():
    headers = {"X-Cloud-Trace-Context": f"{TRACE}/12345;o=1"}

    assert trace_from_headers(headers) == (TRACE, "0000000000003039")


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": f"00-{'0' * 32}-{SPAN}-01"},  # all-zero trace id is invalid
        {"traceparent": "garbage"},
        {"X-Cloud-Trace-Context": "not-hex/1;o=1"},
        {},
    ],
)
def test_invalid_or_absent_trace_headers_give_no_trace(headers):
    assert trace_from_headers(headers) == (None, None)


def test_invalid_traceparent_falls_back_to_googles_header():
    headers = {"traceparent": "00-xyz-1-01", "X-Cloud-Trace-Context": f"{TRACE}/1"}

    assert trace_from_headers(headers) == (TRACE, "0000000000000001")


def test_a_request_without_trace_headers_gets_a_made_up_trace_id_of_its_own():
    made_up = [request_log_fields({})["trace"] for _ in range(100)]

    assert all(re.fullmatch(r"[0-9a-f]{32}", trace) for trace in made_up)
    assert len(set(made_up)) == 100
    assert request_log_fields({"traceparent": f"00-{TRACE}-{SPAN}-01"})["trace"] == TRACE


# -- configure_logging --------------------------------------------------------------------


@pytest.fixture
def fresh_logging(monkeypatch) -> Iterator[logging.Logger]:
    """configure_logging as in a new process; the root logger is restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.setattr(logging_config, "_configured", False)
    monkeypatch.setattr(logging_config, "_handler", None)
    yield root
    root.handlers, root.level = handlers, level


def test_configure_logging_installs_one_stdout_json_handler(fresh_logging, capsys):
    configure_logging()
    configure_logging()

    logging.getLogger("stratus.test").info("to stdout")

    ours = [h for h in fresh_logging.handlers if isinstance(h.formatter, JsonFormatter)]
    assert len(ours) == 1
    assert one(stdout_entries(capsys), "to stdout")["severity"] == "INFO"


def test_configure_logging_reads_log_level(fresh_logging, monkeypatch, capsys):
    monkeypatch.setenv("LOG_LEVEL", "warning")
    configure_logging()

    logging.getLogger("stratus.test").info("hidden")
    logging.getLogger("stratus.test").warning("shown")

    assert [e["message"] for e in stdout_entries(capsys)] == ["shown"]


def test_unknown_log_level_falls_back_to_info_and_says_so(fresh_logging, monkeypatch, capsys):
    monkeypatch.setenv("LOG_LEVEL", "chatty")
    configure_logging()

    assert fresh_logging.level == logging.INFO
    assert (
        "unknown LOG_LEVEL 'CHATTY'"
        in one(stdout_entries(capsys), "unknown LOG_LEVEL 'CHATTY'; using INFO")["message"]
    )


@pytest.fixture
def alone(fresh_logging: logging.Logger) -> Callable[[], logging.Handler]:
    """Makes configure_logging's handler the only one, as in a function's process (pytest's
    capture handlers, added for the test's body, set aside): API lines are then written
    without going through logging."""
    configure_logging()
    ours = fresh_logging.handlers[-1]

    def only_ours() -> logging.Handler:
        fresh_logging.handlers = [ours]
        return ours

    return only_ours


def test_an_api_line_written_directly_is_the_line_logging_writes(alone, capsys, monkeypatch):
    made = logging.getLogRecordFactory()
    records: list[str] = []

    def counted(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = made(*args, **kwargs)
        records.append(record.getMessage())
        return record

    monkeypatch.setattr(logging, "_logRecordFactory", counted)  # setLogRecordFactory, undone
    alone()
    with log_context(function="agents", trace=TRACE, span=SPAN, execution_id="exec-1"):
        log_api_call("/agents/{agent_id}", "GET", 200, 1.23456, user_id="u-1")
        assert records == []  # written directly: no record was made
        logging.getLogger().addHandler(logging.NullHandler())  # now another handler sees it
        log_api_call("/agents/{agent_id}", "GET", 200, 1.23456, user_id="u-1")
        assert records == ["GET /agents/{agent_id} -> 200"]

    direct, through_logging = stdout_entries(capsys)

    assert direct.pop("time").endswith("+00:00")
    through_logging.pop("time")
    assert direct == through_logging
    assert direct["message"] == "GET /agents/{agent_id} -> 200"
    assert direct["logging.googleapis.com/trace"] == TRACE
    assert direct["logging.googleapis.com/labels"] == {
        "function": "agents",
        "execution_id": "exec-1",
    }
    assert direct["logging.googleapis.com/sourceLocation"]["function"] == "log_api_call"


def test_api_lines_reach_other_handlers_and_respect_filters_and_levels(alone, capsys):
    ours = alone()
    api = logging.getLogger("stratus.api")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    api.addHandler(keep)
    try:
        log_api_call("/a", "GET", 200, 1.0)  # a handler of its own sees it, and stdout too
    finally:
        api.removeHandler(keep)
    refuse = logging.Filter("nothing.matches")
    api.addFilter(refuse)
    try:
        log_api_call("/b", "GET", 200, 1.0)  # filtered out: written nowhere
    finally:
        api.removeFilter(refuse)
    ours.setLevel(logging.WARNING)
    log_api_call("/c", "GET", 200, 1.0)  # below the handler's level: not written
    ours.setLevel(logging.NOTSET)
    log_api_call("/d", "GET", 200, 1.0)

    assert [r.getMessage() for r in seen] == ["GET /a -> 200"]
    assert [e["endpoint"] for e in stdout_entries(capsys)] == ["/a", "/d"]


# -- through a real function ----------------------------------------------------------------


def test_request_lines_carry_trace_function_and_execution_id(db, client, capsys, monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "stratus-prod")
    capsys.readouterr()

    client("auth").post(
        "/login",
        json={"email": "nobody@example.com", "password": PASSWORD},
        headers={"traceparent": f"00-{TRACE}-{SPAN}-01", "Function-Execution-Id": "ex-42"},
    )

    found = stdout_entries(capsys)
    api = one(found, "POST /login -> 401")
    assert api["logging.googleapis.com/trace"] == f"projects/stratus-prod/traces/{TRACE}"
    assert api["logging.googleapis.com/spanId"] == SPAN
    assert api["logging.googleapis.com/labels"]["function"] == "auth"
    assert api["logging.googleapis.com/labels"]["execution_id"] == "ex-42"
    assert api["status"] == 401


def test_request_without_execution_id_gets_one_from_functions_framework(db, client, capsys):
    capsys.readouterr()

    client("auth").get("/me")

    api = one(stdout_entries(capsys), "GET /me -> 401")
    assert len(api["logging.googleapis.com/labels"]["execution_id"]) == 12


def test_request_trace_from_x_cloud_trace_context(db, client, capsys, monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p1")
    capsys.readouterr()

    client("auth").get("/me", headers={"X-Cloud-Trace-Context": f"{TRACE}/99;o=1"})

    api = one(stdout_entries(capsys), "GET /me -> 401")
    assert api["logging.googleapis.com/trace"] == f"projects/p1/traces/{TRACE}"
    assert api["logging.googleapis.com/spanId"] == f"{99:016x}"


def test_failed_login_is_a_security_event_without_the_password(db, client, capsys):
    c = client("auth")
    c.post("/register", json={"email": "ann@example.com", "password": PASSWORD})
    capsys.readouterr()

    c.post("/login", json={"email": "ann@example.com", "password": "Wr0ng-password"})

    out = capsys.readouterr().out
    events = [e for e in entries(out) if "security_event" in e["logging.googleapis.com/labels"]]
    kinds = {e["logging.googleapis.com/labels"]["security_event"] for e in events}
    assert {"login_failed", "auth_failed"} <= kinds
    assert all(e["severity"] == "WARNING" for e in events)
    assert "Wr0ng-password" not in out
    assert PASSWORD not in out


def test_a_whole_session_logs_no_password_token_or_secret(db, client, capsys):
    c = client("auth")
    c.post("/register", json={"email": "ann@example.com", "password": PASSWORD})
    pair = c.post("/login", json={"email": "ann@example.com", "password": PASSWORD}).json
    c.get("/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    c.post("/refresh", json={"refresh_token": pair["refresh_token"]})

    out = capsys.readouterr().out
    for secret in (PASSWORD, pair["access_token"], pair["refresh_token"], "test-secret-xxxx"):
        assert secret not in out


def test_unhandled_error_logs_its_stack_trace_but_the_response_has_none(
    client, capsys, settings_env, tmp_path
):
    settings_env(DATABASE_URL=f"sqlite:///{tmp_path / 'unmigrated.db'}")  # no tables: a bug
    capsys.readouterr()

    response = client("auth").post("/login", json={"email": "a@example.com", "password": PASSWORD})

    assert response.status_code == 500
    assert response.mimetype == "application/problem+json"
    body = response.get_data(as_text=True)
    for leak in ("Traceback", "no such table", "sqlalchemy", "users"):
        assert leak not in body
    error = one(stdout_entries(capsys), "unhandled error in POST /login")
    assert error["severity"] == "ERROR"
    assert "no such table" in error["stack_trace"]
    assert error["logging.googleapis.com/labels"]["function"] == "auth"
