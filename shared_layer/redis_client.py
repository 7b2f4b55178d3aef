"""The process's Redis client (`REDIS_URL`; Memorystore in Google Cloud), made on first use.

`redis` is imported only here and only when a feature that uses Redis runs with `REDIS_URL`
set: without it (the local default) nothing imports it. Redis errors reach callers as
`UpstreamError` (503, retry later) through `redis_errors()`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from shared_layer.config import get_settings

if TYPE_CHECKING:
    from redis import Redis

__all__ = ["get_redis", "redis_errors", "reset_redis"]

_lock = threading.Lock()
_client: Redis | None = None

CONNECT_TIMEOUT_SECONDS = 2.0
SOCKET_TIMEOUT_SECONDS = 2.0


def get_redis() -> Redis:
    """The client for `REDIS_URL`, shared by the process's threads (it keeps a pool)."""
    global _client
    url = get_settings().redis_url
    if url is None:
        raise RuntimeError("REDIS_URL is not set")  # callers choose Redis only when it is
    with _lock:
        if _client is None:
            from redis import Redis

            _client = Redis.from_url(
                url,
                socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
                socket_timeout=SOCKET_TIMEOUT_SECONDS,
                health_check_interval=30,
            )
        return _client


def redis_errors() -> tuple[type[Exception], ...]:
    """The exceptions a Redis call raises when Redis cannot answer."""
    from redis.exceptions import RedisError

    return (RedisError,)


def reset_redis() -> None:
    """Close the client (tests, and after the settings change)."""
    global _client
    with _lock:
        client, _client = _client, None
    if client is not None:
        client.close()
