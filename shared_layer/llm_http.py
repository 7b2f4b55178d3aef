"""A small client for OpenAI-compatible HTTP APIs, built on the standard library.

Stratus calls two endpoints (`POST /chat/completions`, `POST /embeddings`) with JSON bodies.
The `openai` SDK does that too, but importing it costs about half a second (its typed models
of the whole API, httpx, aiohttp), which a cold task_runner would pay before its first answer;
`http.client` + `ssl` + `json` cost about 20 ms. This module speaks the wire protocol the SDK
speaks, with the same retry policy:

- `Authorization: Bearer <key>` (when there is a key), `OpenAI-Organization` and
  `OpenAI-Project` when set, a `User-Agent` naming Stratus;
- https verified with the default context; one keep-alive connection per thread, reopened once
  at once when the server had closed it while idle;
- `timeout` bounds each socket operation (connect, send, each read), as the SDK's does;
- up to `max_retries` retries of timeouts, connection errors, 408/409/429 and 5xx, waiting
  0.5 s, 1 s, 2 s ... (at most 8 s, minus up to 25% jitter), or what the server's
  `Retry-After` / `retry-after-ms` asks if it is at most `MAX_RETRY_AFTER_SECONDS` (longer:
  no retry here; the caller's queue can redeliver later); `x-should-retry` overrides.

Errors, for the caller to translate (shared_layer/openai_config.py does):

    LLMHTTPError
     +-- TransportError     could not connect, timed out, connection lost (`kind` says which)
     +-- StatusError        a non-2xx answer: `status`, the server's `message`, `retry_after`
     +-- MalformedResponse  a 2xx answer whose body is not a JSON object

Messages name the status and the server's message, never the API key.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import tenacity

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_RETRY_AFTER_SECONDS",
    "USER_AGENT",
    "LLMClient",
    "LLMHTTPError",
    "MalformedResponse",
    "StatusError",
    "TransportError",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
USER_AGENT = "Stratus/0.1 (OpenAI-compatible client; Python http.client)"
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER_SECONDS = 60.0
RETRYABLE_STATUSES = frozenset({408, 409, 429})
_MAX_MESSAGE_CHARS = 300
# What a keep-alive connection the server closed while idle raises on its next request.
_STALE = (ConnectionResetError, BrokenPipeError, http.client.BadStatusLine)

logger = logging.getLogger(__name__)

_tls_lock = threading.Lock()
_tls_context: ssl.SSLContext | None = None


class LLMHTTPError(Exception):
    """Anything that kept a request from yielding a JSON object."""


class TransportError(LLMHTTPError):
    def __init__(self, message: str, *, kind: Literal["timed out", "could not connect"]) -> None:
        super().__init__(message)
        self.kind = kind


class StatusError(LLMHTTPError):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        retry_after: float | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after  # seconds the server asked us to wait, if it did
        self.should_retry = should_retry  # the server's `x-should-retry`, if it said


class MalformedResponse(LLMHTTPError):
    pass


class LLMClient:
    """POSTs JSON to one OpenAI-compatible base URL; safe to share between threads."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        organization: str | None = None,
        project: str | None = None,
    ) -> None:
        url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the base URL {url!r} is not an http(s) URL")
        self.base_url = url
        self.timeout = timeout
        self.max_retries = max_retries
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path
        self._key = api_key or ""
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        if organization:
            headers["OpenAI-Organization"] = organization
        if project:
            headers["OpenAI-Project"] = project
        self._headers = headers
        self._local = threading.local()

    def __repr__(self) -> str:  # never the key
        return f"LLMClient(base_url={self.base_url!r}, timeout={self.timeout})"

    def post(
        self, path: str, body: Mapping[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        """The JSON object the server answers to `body` at `path` (e.g. "/chat/completions"),
        after the retries the policy allows; raises an `LLMHTTPError` otherwise."""
        payload = json.dumps(body).encode()
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            retry=tenacity.retry_if_exception(_worth_retrying),
            wait=_retry_wait,
            before_sleep=_log_retry,
            reraise=True,
        )
        result: dict[str, Any] = retrying(self._post_once, path, payload, timeout or self.timeout)
        return result

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()

    def _post_once(self, path: str, payload: bytes, timeout: float) -> dict[str, Any]:
        status, headers, data = self._exchange(self._prefix + path, payload, timeout)
        if 200 <= status < 300:
            try:
                parsed = json.loads(data)
            except ValueError:
                raise MalformedResponse(
                    f"the answer is not JSON: {self._snippet(data)!r}"
                ) from None
            if not isinstance(parsed, dict):
                raise MalformedResponse(f"the answer is a JSON {type(parsed).__name__}")
            return parsed
        should = headers.get("x-should-retry")
        raise StatusError(
            status,
            self._error_message(data),
            retry_after=_retry_after(headers),
            should_retry={"true": True, "false": False}.get(should or ""),
        )

    def _exchange(
        self, target: str, payload: bytes, timeout: float
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        for _ in range(2):
            connection = self._connection()
            reused = connection.sock is not None
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            try:
                connection.request("POST", target, body=payload, headers=self._headers)
                response = connection.getresponse()
                return response.status, response.headers, response.read()
            except _STALE as exc:
                connection.close()
                if reused:
                    continue  # the server closed the idle connection: once more, on a new one
                raise TransportError(
                    f"the connection was lost: {type(exc).__name__}", kind="could not connect"
                ) from exc
            except TimeoutError as exc:
                connection.close()
                raise TransportError(f"no answer within {timeout:g} s", kind="timed out") from exc
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                raise TransportError(
                    f"{type(exc).__name__}: {exc}", kind="could not connect"
                ) from exc
        raise TransportError("the server closed the connection twice", kind="could not connect")

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            if self._https:
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.timeout, context=_default_tls()
                )
            else:
                connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=self.timeout
                )
            self._local.connection = connection
        return connection

    def _snippet(self, data: bytes) -> str:
        text = " ".join(data.decode("utf-8", "replace").split())
        if self._key:
            text = text.replace(self._key, "<api key>")
        if len(text) > _MAX_MESSAGE_CHARS:
            text = text[: _MAX_MESSAGE_CHARS - 3] + "..."
        return text

    def _error_message(self, data: bytes) -> str:
        """The server's own message (OpenAI's `{"error": {"message": ...}}` and the shapes
        compatible servers use), else the start of the body."""
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None
        message: object = None
        if isinstance(parsed, dict):
            error = parsed.get("error")
            message = error.get("message") if isinstance(error, dict) else error
            message = message or parsed.get("message") or parsed.get("detail")
        text = message if isinstance(message, str) else data.decode("utf-8", "replace")
        return self._snippet(text.encode()) or "(empty body)"


def _default_tls() -> ssl.SSLContext:
    """One verifying context per process: loading the CA store is the slow part."""
    global _tls_context
    with _tls_lock:
        if _tls_context is None:
            _tls_context = ssl.create_default_context()
        return _tls_context


def _retry_after(headers: http.client.HTTPMessage) -> float | None:
    """Seconds from `retry-after-ms`, or `Retry-After` (seconds or an HTTP date)."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / divisor
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    return None


def _worth_retrying(exc: BaseException) -> bool:
    if isinstance(exc, TransportError):
        return True
    if not isinstance(exc, StatusError):
        return False
    if exc.retry_after is not None and exc.retry_after > MAX_RETRY_AFTER_SECONDS:
        return False
    if exc.should_retry is not None:
        return exc.should_retry
    return exc.status >= 500 or exc.status in RETRYABLE_STATUSES


def _retry_wait(state: tenacity.RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    asked = exc.retry_after if isinstance(exc, StatusError) else None
    if asked is not None and 0 < asked <= MAX_RETRY_AFTER_SECONDS:
        return asked
    backoff = min(INITIAL_RETRY_DELAY * 2.0 ** (state.attempt_number - 1), MAX_RETRY_DELAY)
    return backoff * (1 - 0.25 * random.random())  # noqa: S311 - jitter, not a secret


def _log_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    logger.warning(
        "model API call failed, retrying: %s (attempt %d, waiting %.2f s)",
        exc,
        state.attempt_number,
        state.next_action.sleep if state.next_action else 0.0,
    )
