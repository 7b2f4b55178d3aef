"""Whether the configured OpenAI-compatible API answers, for the health report (cloud only).

One `GET {base}/models` with the key: free (no tokens are spent), and it proves the address,
the network path and the key at once. It uses the standard library, not `openai`, so that
`health` never imports the SDK, and the result is cached per process for
`LLM_PROBE_TTL_SECONDS`, so an uptime check polling health does not poll the provider.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from shared_layer.config import Settings

OPENAI_BASE_URL = "https://api.openai.com/v1"
PROBE_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class Reachability:
    reachable: bool
    detail: str | None
    checked_at: float  # time.monotonic() of the probe


_lock = threading.Lock()
_cache: dict[tuple[str, str], Reachability] = {}


def llm_reachability(settings: Settings, *, timeout: float = PROBE_TIMEOUT_SECONDS) -> Reachability:
    """The cached probe result for these settings, probing again once it is too old."""
    base = (settings.openai_base_url or OPENAI_BASE_URL).rstrip("/")
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    cache_key = (base, key)
    with _lock:
        cached = _cache.get(cache_key)
    if cached is not None and time.monotonic() - cached.checked_at < settings.llm_probe_ttl_seconds:
        return cached
    result = _probe(base, key, timeout)
    with _lock:
        _cache[cache_key] = result
    return result


def forget_probes() -> None:
    """Drop cached results (tests)."""
    with _lock:
        _cache.clear()


def _probe(base: str, key: str, timeout: float) -> Reachability:
    now = time.monotonic()
    if not base.startswith(("http://", "https://")):
        return Reachability(False, "OPENAI_BASE_URL is not an http(s) URL", now)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(f"{base}/models", headers=headers, method="GET")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            response.read(1)
            return Reachability(True, None, now)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return Reachability(False, f"the provider refused the API key ({exc.code})", now)
        return Reachability(False, f"the provider answered {exc.code} to GET /models", now)
    except (OSError, ValueError) as exc:  # refused, timed out, DNS, TLS
        reason = getattr(exc, "reason", None) or exc
        return Reachability(
            False, f"the provider did not answer: {type(exc).__name__}: {reason}", now
        )
