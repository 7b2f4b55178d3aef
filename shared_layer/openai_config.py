"""The language model: chat completions and embeddings, from OpenAI or an offline stand-in.

`settings.llm_mode` decides the provider. `openai` talks to `OPENAI_BASE_URL` (so any
OpenAI-compatible server works) through one cached `LLMClient` (shared_layer/llm_http.py, the
wire protocol on the standard library: the `openai` SDK costs a cold start about half a
second); `offline` answers deterministically from the messages and says so (provider
"offline", content starting with "[offline]"), so a local stack runs without a key and nobody
mistakes its output for a model's.

The client is imported only when a call needs it: functions that never talk to a model do not
pay for it at cold start. Its errors are translated here, where the model is called:

    timeouts, connection errors, 408/409/429, 5xx            -> UpstreamError (retry)
    any other 4xx (bad request, unknown model, bad key),
    a body that is not JSON or not the expected shape        -> LLMRequestError (don't)
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import re
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from shared_layer.config import get_settings
from shared_layer.errors import LLMRequestError, UpstreamError
from shared_layer.logging_config import get_agent_logger

if TYPE_CHECKING:
    from shared_layer.llm_http import LLMClient, LLMHTTPError

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "OFFLINE_PREFIX",
    "ChatResult",
    "cosine_similarity",
    "create_chat_completion",
    "create_embedding",
    "get_client",
    "reset_client",
    "translate_error",
    "validate_model",
]

Message = Mapping[str, str]
Provider = Literal["openai", "offline"]

OFFLINE_PREFIX = "[offline]"
DEFAULT_EMBEDDING_MODEL = "text-embedding-3-small"
OFFLINE_EMBEDDING_DIMENSIONS = 256
_RETRYABLE_STATUSES = frozenset({408, 409, 429})
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,99}")

logger = get_agent_logger()

_lock = threading.Lock()
_client: tuple[tuple[Any, ...], LLMClient] | None = None


@dataclass(frozen=True)
class ChatResult:
    content: str
    model: str
    provider: Provider
    prompt_tokens: int
    completion_tokens: int
    duration_ms: float
    finish_reason: str | None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def validate_model(name: str) -> bool:
    """Whether `name` can be a model id. Syntax only: an OpenAI-compatible server may serve any
    model, so a fixed list would reject valid ones; the server's 404 is the final word."""
    return isinstance(name, str) and _MODEL_NAME.fullmatch(name) is not None


def get_client() -> LLMClient:
    """The process's model API client, rebuilt only when the settings it was built from change.

    Organization and project come from `OPENAI_ORG_ID` / `OPENAI_PROJECT_ID`, as the `openai`
    SDK reads them; a bad `OPENAI_BASE_URL` is an `LLMRequestError` (retrying cannot help).
    """
    global _client
    settings = get_settings()
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    identity = (
        key,
        settings.openai_base_url,
        settings.openai_timeout_seconds,
        settings.openai_max_retries,
        os.environ.get("OPENAI_ORG_ID") or None,
        os.environ.get("OPENAI_PROJECT_ID") or None,
    )
    current = _client
    if current is not None and current[0] == identity:
        return current[1]
    with _lock:
        if _client is None or _client[0] != identity:
            from shared_layer.llm_http import LLMClient

            try:
                client = LLMClient(
                    base_url=settings.openai_base_url,
                    api_key=key,  # a local OpenAI-compatible server usually needs none
                    timeout=settings.openai_timeout_seconds,
                    max_retries=settings.openai_max_retries,
                    organization=identity[4],
                    project=identity[5],
                )
            except ValueError as exc:
                raise LLMRequestError(
                    f"OPENAI_BASE_URL: {exc}", extra={"provider": "openai"}
                ) from exc
            _client = (identity, client)
        return _client[1]


def reset_client() -> None:
    """Forget the cached client (tests)."""
    global _client
    with _lock:
        _client = None


def create_chat_completion(
    *,
    messages: Sequence[Message],
    model: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    user_id: object | None = None,
    timeout: float | None = None,
) -> ChatResult:
    """One chat completion; `UpstreamError` when worth retrying, `LLMRequestError` when not."""
    settings = get_settings()
    model = model or settings.openai_model
    if not messages:
        raise LLMRequestError("a chat completion needs at least one message")
    started = time.perf_counter()
    if settings.llm_mode == "offline":
        result = _offline_chat(messages, model, started)
    else:
        result = _openai_chat(
            messages,
            model=model,
            temperature=settings.openai_temperature if temperature is None else temperature,
            max_tokens=max_tokens,
            user_id=user_id,
            timeout=timeout,
            started=started,
        )
    logger.info(
        "chat completion",
        provider=result.provider,
        model=result.model,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        duration_ms=round(result.duration_ms, 2),
        finish_reason=result.finish_reason,
        user_id=str(user_id) if user_id else None,
    )
    return result


def _openai_chat(
    messages: Sequence[Message],
    *,
    model: str,
    temperature: float,
    max_tokens: int | None,
    user_id: object | None,
    timeout: float | None,
    started: float,
) -> ChatResult:
    from shared_layer.llm_http import LLMHTTPError

    body: dict[str, Any] = {
        "model": model,
        "messages": [dict(m) for m in messages],
        "temperature": temperature,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if user_id is not None:
        body["user"] = str(user_id)
    try:
        response = get_client().post("/chat/completions", body, timeout=timeout)
    except LLMHTTPError as exc:
        raise translate_error(exc, what="chat completion") from exc
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        raise LLMRequestError(f"model {model} returned no choices", extra={"provider": "openai"})
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(message, dict) or not isinstance(content, str | None):
        raise _malformed("chat completion", "its first choice has no message")
    usage = response.get("usage") or {}
    if not isinstance(usage, dict):
        raise _malformed("chat completion", "its usage is not an object")
    answered_model = response.get("model")
    finish_reason = choice.get("finish_reason")
    return ChatResult(
        content=content or "",
        model=answered_model if isinstance(answered_model, str) and answered_model else model,
        provider="openai",
        prompt_tokens=_token_count(usage, "prompt_tokens"),
        completion_tokens=_token_count(usage, "completion_tokens"),
        duration_ms=(time.perf_counter() - started) * 1000,
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
    )


def _token_count(usage: Mapping[str, Any], name: str) -> int:
    value = usage.get(name, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _malformed("chat completion", f"its usage.{name} is not a count")
    return value


def _malformed(what: str, why: str) -> LLMRequestError:
    return LLMRequestError(
        f"{what} failed: the answer has the wrong shape ({why})", extra={"provider": "openai"}
    )


def translate_error(exc: LLMHTTPError, *, what: str) -> UpstreamError | LLMRequestError:
    """Our error for a model API client error: retryable or permanent."""
    from shared_layer.llm_http import StatusError, TransportError

    if isinstance(exc, TransportError):
        return UpstreamError(f"{what} {exc.kind}: {exc}", extra={"provider": "openai"})
    if isinstance(exc, StatusError):
        status = exc.status
        detail = f"{what} failed with HTTP {status}: {exc.message}"
        extra = {"provider": "openai", "upstream_status": status}
        if status >= 500 or status in _RETRYABLE_STATUSES:
            return UpstreamError(detail, extra=extra)
        return LLMRequestError(detail, extra=extra)
    # a body that is not a JSON object
    return LLMRequestError(f"{what} failed: {exc}", extra={"provider": "openai"})


def _offline_chat(messages: Sequence[Message], model: str, started: float) -> ChatResult:
    """A deterministic stand-in: a function of the messages only, labelled as offline."""
    roles = [m.get("role", "?") for m in messages]
    users = [m.get("content", "") for m in messages if m.get("role") == "user"]
    request = " ".join((users[-1] if users else "").split())
    if len(request) > 500:
        request = request[:497] + "..."
    digest = hashlib.sha256(repr([(m.get("role"), m.get("content")) for m in messages]).encode())
    content = (
        f"{OFFLINE_PREFIX} No language model is configured; this deterministic reply stands in "
        f"for {model}.\nRequest: {request}\n"
        f"Context: {len(messages)} messages ({', '.join(roles)}), digest {digest.hexdigest()[:12]}."
    )
    prompt_tokens = sum(_approx_tokens(m.get("content", "")) for m in messages)
    return ChatResult(
        content=content,
        model=model,
        provider="offline",
        prompt_tokens=prompt_tokens,
        completion_tokens=_approx_tokens(content),
        duration_ms=(time.perf_counter() - started) * 1000,
        finish_reason="stop",
    )


def _approx_tokens(text: str) -> int:
    """About four characters a token, as OpenAI's rule of thumb says."""
    return math.ceil(len(text) / 4)


def create_embedding(text: str, *, model: str = DEFAULT_EMBEDDING_MODEL) -> list[float]:
    """The embedding of `text`; offline, a hashed bag of words (similar words, similar vectors)."""
    if get_settings().llm_mode == "offline":
        return _offline_embedding(text)
    from shared_layer.llm_http import LLMHTTPError

    # base64 (float32, little-endian) is what the SDK asks for: a quarter of the JSON's size.
    body = {"input": text, "model": model, "encoding_format": "base64"}
    try:
        response = get_client().post("/embeddings", body)
    except LLMHTTPError as exc:
        raise translate_error(exc, what="embedding") from exc
    data = response.get("data")
    if not isinstance(data, list) or not data:
        raise LLMRequestError(f"model {model} returned no embedding", extra={"provider": "openai"})
    embedding = data[0].get("embedding") if isinstance(data[0], dict) else None
    return _embedding_vector(embedding)


def _embedding_vector(embedding: object) -> list[float]:
    """The floats of an embedding sent as base64 float32 or (servers that ignore the encoding
    asked for) as a JSON list."""
    if isinstance(embedding, str):
        try:
            raw = base64.b64decode(embedding, validate=True)
        except ValueError:
            raise _malformed("embedding", "not base64") from None
        if len(raw) % 4:
            raise _malformed("embedding", "not a whole number of float32s")
        return [float(x) for x in struct.unpack(f"<{len(raw) // 4}f", raw)]
    if isinstance(embedding, list) and all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in embedding
    ):
        return [float(x) for x in embedding]
    raise _malformed("embedding", "no vector")


def _offline_embedding(text: str) -> list[float]:
    vector = [0.0] * OFFLINE_EMBEDDING_DIMENSIONS
    for word in re.findall(r"\w+", text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        index = int.from_bytes(digest[:4], "big") % OFFLINE_EMBEDDING_DIMENSIONS
        vector[index] += 1.0 if digest[4] % 2 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def cosine_similarity(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine of the angle between two vectors; 0.0 when either is all zeros."""
    if len(a) != len(b):
        raise ValueError(f"vectors differ in length ({len(a)} != {len(b)})")
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
