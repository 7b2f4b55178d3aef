"""The language model: chat completions and embeddings, from OpenAI or an offline stand-in.

`settings.llm_mode` decides the provider. `openai` uses one cached `openai.OpenAI` client
pointed at `OPENAI_BASE_URL` (so any OpenAI-compatible server works); `offline` answers
deterministically from the messages and says so (provider "offline", content starting with
"[offline]"), so a local stack runs without a key and nobody mistakes its output for a model's.

The `openai` package is imported only when a call needs it: functions that never talk to a model
do not pay for it at cold start. Vendor errors are translated here, where the vendor is called:

    openai.RateLimitError, APITimeoutError, APIConnectionError, 5xx  -> UpstreamError (retry)
    any other 4xx (bad request, unknown model, bad key), bad shapes  -> LLMRequestError (don't)
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from shared_layer.config import get_settings
from shared_layer.errors import LLMRequestError, UpstreamError
from shared_layer.logging_config import get_agent_logger

if TYPE_CHECKING:
    import openai

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
_client: tuple[tuple[Any, ...], openai.OpenAI] | None = None


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


def get_client() -> openai.OpenAI:
    """The process's OpenAI client, rebuilt only when the settings it was built from change."""
    global _client
    settings = get_settings()
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    identity = (
        key,
        settings.openai_base_url,
        settings.openai_timeout_seconds,
        settings.openai_max_retries,
    )
    current = _client
    if current is not None and current[0] == identity:
        return current[1]
    with _lock:
        if _client is None or _client[0] != identity:
            import openai

            client = openai.OpenAI(
                # A local OpenAI-compatible server usually needs no key, but the client wants one.
                api_key=key or "unused",
                base_url=settings.openai_base_url or None,
                timeout=settings.openai_timeout_seconds,
                max_retries=settings.openai_max_retries,
            )
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
    import openai

    client = get_client()
    options: dict[str, Any] = {}
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    if user_id is not None:
        options["user"] = str(user_id)
    if timeout is not None:
        options["timeout"] = timeout
    try:
        response = client.chat.completions.create(
            model=model,
            messages=[dict(m) for m in messages],  # type: ignore[misc]
            temperature=temperature,
            **options,
        )
    except openai.OpenAIError as exc:
        raise translate_error(exc, what="chat completion") from exc
    if not response.choices:
        raise LLMRequestError(f"model {model} returned no choices")
    choice = response.choices[0]
    usage = response.usage
    return ChatResult(
        content=choice.message.content or "",
        model=response.model or model,
        provider="openai",
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        duration_ms=(time.perf_counter() - started) * 1000,
        finish_reason=choice.finish_reason,
    )


def translate_error(exc: openai.OpenAIError, *, what: str) -> UpstreamError | LLMRequestError:
    """Our error for an `openai` exception: retryable or permanent."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        kind = "timed out" if isinstance(exc, openai.APITimeoutError) else "could not connect"
        return UpstreamError(f"{what} {kind}: {exc}", extra={"provider": "openai"})
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = f"{what} failed with HTTP {status}: {exc.message}"
        extra = {"provider": "openai", "upstream_status": status}
        if status >= 500 or status in _RETRYABLE_STATUSES:
            return UpstreamError(detail, extra=extra)
        return LLMRequestError(detail, extra=extra)
    # response validation errors, missing configuration
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
    import openai

    try:
        response = get_client().embeddings.create(input=text, model=model)
    except openai.OpenAIError as exc:
        raise translate_error(exc, what="embedding") from exc
    if not response.data:
        raise LLMRequestError(f"model {model} returned no embedding")
    return [float(x) for x in response.data[0].embedding]


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
