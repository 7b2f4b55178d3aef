"""Small helpers (the seed's `utils`, kept to what the code calls and what is cheap and useful).

Ids, text chunking, email syntax, dict merging, finding a value in nested JSON, retries
(tenacity) and the password rules that registration applies. Each does one thing; nothing
here talks to a database or HTTP.
"""

from __future__ import annotations

import math
import secrets
import string
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ParamSpec, TypeVar

__all__ = [
    "chunk_text",
    "deep_merge",
    "generate_short_id",
    "generate_uuid",
    "is_valid_email",
    "password_problems",
    "retry",
    "truncate_text",
]

P = ParamSpec("P")
R = TypeVar("R")

_SHORT_ID_ALPHABET = string.ascii_letters + string.digits


def generate_uuid() -> str:
    """A random UUID (version 4) as text."""
    return str(uuid.uuid4())


def generate_short_id(length: int = 8) -> str:
    """A random alphanumeric id from a CSPRNG (62 symbols, so ~5.95 bits per character)."""
    if length < 1:
        raise ValueError("length must be at least 1")
    return "".join(secrets.choice(_SHORT_ID_ALPHABET) for _ in range(length))


def truncate_text(text: str, max_length: int = 100, suffix: str = "...") -> str:
    """`text` cut to at most `max_length` characters, the suffix included when it was cut."""
    if max_length < len(suffix):
        raise ValueError("max_length must leave room for the suffix")
    if len(text) <= max_length:
        return text
    return text[: max_length - len(suffix)] + suffix


def chunk_text(text: str, size: int, overlap: int = 0) -> list[str]:
    """Consecutive pieces of at most `size` characters, each repeating the previous `overlap`.

    For feeding long inputs to a model (or an embedding) piece by piece without losing the
    context at the seams. The last piece may be shorter; empty text gives no pieces.
    """
    if size < 1:
        raise ValueError("size must be at least 1")
    if not 0 <= overlap < size:
        raise ValueError("overlap must be at least 0 and smaller than size")
    step = size - overlap
    chunks = []
    for start in range(0, len(text), step):
        chunks.append(text[start : start + size])
        if start + size >= len(text):
            break
    return chunks


def is_valid_email(email: str) -> bool:
    """Whether `email` is a syntactically valid address (no DNS lookup)."""
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: `override` laid over `base`, nested mappings merged key by key.

    Neither input is changed; a non-mapping value in `override` replaces the whole entry.
    """
    merged: dict[str, Any] = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def locate(value: Any, match: Callable[[Any], bool], path: str = "") -> str | None:
    """Where in `value` the first item `match` picks is, walking the lists and dicts that hold
    items (keys too), as a dotted path from `path` (`""`: `value` itself); None if nowhere."""
    if match(value):
        return path
    if isinstance(value, Mapping):
        for key, item in value.items():
            at = f"{path}.{key}" if path else str(key)
            found = at if match(key) else locate(item, match, at)
            if found is not None:
                return found
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            found = locate(item, match, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
    return None


def holds_nul(item: Any) -> bool:
    """A string with a NUL (U+0000), which no PostgreSQL text holds."""
    return isinstance(item, str) and "\x00" in item


def not_finite(item: Any) -> bool:
    """A float JSON cannot write (NaN, an infinity: a number past a double's range reads as
    one), which PostgreSQL's json refuses."""
    return isinstance(item, float) and not math.isfinite(item)


def retry(
    *,
    max_attempts: int = 3,
    delay: float = 1.0,
    max_delay: float = 30.0,
    exceptions: tuple[type[BaseException], ...] = (Exception,),
    sleep: Callable[[float], None] = time.sleep,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Retry a function on `exceptions` with exponential backoff (tenacity).

    Waits `delay`, `2 * delay`, `4 * delay`, … (capped at `max_delay`) between attempts and
    re-raises the last error after `max_attempts`. Retry only what may pass: a network blip,
    not a bad request.
    """
    import tenacity

    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    policy = tenacity.retry(
        stop=tenacity.stop_after_attempt(max_attempts),
        wait=tenacity.wait_exponential(multiplier=delay, min=delay, max=max_delay),
        retry=tenacity.retry_if_exception_type(exceptions),
        sleep=sleep,
        reraise=True,
    )

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        wrapped: Callable[P, R] = policy(function)
        return wrapped

    return decorate


def password_problems(password: str, *, user_inputs: Iterable[str | None] = ()) -> list[str]:
    """What makes `password` unfit to set, in words; empty when it may be set
    (`shared_layer.password_policy`, imported here on first use: it loads zxcvbn)."""
    from shared_layer.password_policy import password_problems as problems

    return problems(password, user_inputs=user_inputs)
