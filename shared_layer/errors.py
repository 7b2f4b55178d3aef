"""The errors services raise, and the one table that maps them to HTTP problems.

    StratusError
    ├── InvalidInput          400  the request is malformed or a field is invalid
    │   └── InvalidSignature       a webhook whose signature or timestamp does not verify
    ├── Unauthorized          401  credentials that do not verify
    │   └── MissingCredentials     no credentials at all
    ├── Forbidden             403  authenticated, but not allowed
    │   └── PlanLimitReached       the caller's plan does not include this (agents, a model)
    ├── NotFound              404  no such resource (or not yours: we do not say which)
    ├── MethodNotAllowed      405
    ├── Conflict              409  the resource exists or is in the wrong state
    ├── PayloadTooLarge       413
    ├── UnsupportedMediaType  415
    ├── RateLimited           429  too many attempts; retry after `retry_after` seconds
    │   └── QuotaExceeded          a monthly plan quota is used up until `resets_at`
    ├── LLMRequestError       502  the language model rejected the request; permanent
    └── UpstreamError         503  a dependency (database, LLM, Pub/Sub) failed; retryable

Services never know status codes; `problem_for` is the only place that does. Each
problem is an RFC 9457 `application/problem+json` document with a stable `type`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PROBLEM_BASE = "https://stratus.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class StratusError(Exception):
    """Base of every error a service raises on purpose."""

    status = 500
    slug = "internal"
    title = "Internal error"

    def __init__(self, detail: str, *, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, Any] = dict(extra or {})


class InvalidInput(StratusError):
    status, slug, title = 400, "invalid-input", "Invalid input"

    def __init__(
        self,
        detail: str,
        *,
        errors: Sequence[Mapping[str, Any]] = (),
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, extra=extra)
        self.errors = [dict(e) for e in errors]
        if self.errors:
            self.extra["errors"] = self.errors


class InvalidSignature(InvalidInput):
    """A webhook that does not prove it comes from its sender (or is too old or too new)."""

    status, slug, title = 400, "invalid-signature", "Invalid webhook signature"


class Unauthorized(StratusError):
    status, slug, title = 401, "unauthorized", "Unauthorized"


class MissingCredentials(Unauthorized):
    """No credentials at all (as opposed to credentials that do not verify)."""


class Forbidden(StratusError):
    status, slug, title = 403, "forbidden", "Forbidden"


class PlanLimitReached(Forbidden):
    """The caller's plan does not include this; waiting does not help, a better plan does."""

    slug, title = "plan-limit", "Not included in the plan"


class NotFound(StratusError):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(StratusError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"

    def __init__(self, detail: str, *, allowed: Sequence[str]) -> None:
        super().__init__(detail, extra={"allowed": sorted(allowed)})
        self.allowed = sorted(allowed)


class Conflict(StratusError):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(StratusError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(StratusError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class RateLimited(StratusError):
    """Too many attempts; `retry_after` is the seconds to wait (the HTTP adapter sends it as
    `Retry-After`)."""

    status, slug, title = 429, "rate-limited", "Too many requests"

    def __init__(
        self, detail: str, *, retry_after: int, extra: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(detail, extra={**(extra or {}), "retry_after": max(1, retry_after)})
        self.retry_after = max(1, retry_after)


class QuotaExceeded(RateLimited):
    """A plan quota for the billing period is used up until it resets."""

    slug, title = "quota-exceeded", "Plan quota exceeded"


class LLMRequestError(StratusError):
    """The model's API refused the request itself (bad request, unknown model, bad key): retrying
    the same request cannot succeed."""

    status, slug, title = 502, "llm-request-rejected", "Language model rejected the request"


class UpstreamError(StratusError):
    """A dependency failed in a way that may pass: callers may retry."""

    status, slug, title = 503, "upstream-unavailable", "Upstream unavailable"


def problem_for(error: StratusError, *, instance: str | None = None) -> dict[str, Any]:
    """The RFC 9457 body for an error; `extra` members never override the standard ones."""
    body: dict[str, Any] = {
        **error.extra,
        "type": PROBLEM_BASE + error.slug,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
    }
    if instance:
        body["instance"] = instance
    return body


def internal_problem(*, instance: str | None = None) -> dict[str, Any]:
    """The body for a bug: it says nothing of the cause (that goes to the log)."""
    return problem_for(
        StratusError("An unexpected error occurred; it has been logged."), instance=instance
    )
