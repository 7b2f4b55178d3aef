"""Counters in Redis: the store when `REDIS_URL` is set (Memorystore in Google Cloud).

Each call is one Lua script, which Redis runs atomically: an attempt is checked and counted on
every key at once, across instances. A counter is a hash (`attempts`, `blocked_until` in Unix
seconds) that expires after its limit's memory, so nothing needs cleaning up.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from shared_layer.errors import UpstreamError
from shared_layer.redis_client import get_redis, redis_errors
from shared_layer.throttle._core import MAX_DOUBLINGS, Key

__all__ = ["RedisStore"]

PREFIX = "stratus:throttle:"

# KEYS: the counters. ARGV[1]: now; then per key: free, base, cap, forget (seconds).
# The wait is Limit.delay's: base * 2^(over - 1), at most cap (tests hold the two stores equal).
_TAKE = f"""
local now = tonumber(ARGV[1])
local wait = 0
for _, key in ipairs(KEYS) do
  local blocked = tonumber(redis.call('HGET', key, 'blocked_until') or '0')
  if blocked - now > wait then wait = blocked - now end
end
if wait > 0 then return tostring(wait) end
for i, key in ipairs(KEYS) do
  local o = 1 + (i - 1) * 4
  local free, base = tonumber(ARGV[o + 1]), tonumber(ARGV[o + 2])
  local cap, forget = tonumber(ARGV[o + 3]), tonumber(ARGV[o + 4])
  local attempts = redis.call('HINCRBY', key, 'attempts', 1)
  local delay = 0
  if attempts > free then
    delay = math.min(cap, base * 2 ^ math.min(attempts - free - 1, {MAX_DOUBLINGS}))
    redis.call('HSET', key, 'blocked_until', tostring(now + delay))
  end
  redis.call('PEXPIRE', key, math.ceil(math.max(forget, delay) * 1000))
end
return '0'
"""

# KEYS: the counters; ARGV[1]: how many of them, first, to forget; the rest are given back.
_SETTLE = """
for i, key in ipairs(KEYS) do
  if i <= tonumber(ARGV[1]) then
    redis.call('DEL', key)
  elseif redis.call('EXISTS', key) == 1 then
    local attempts = redis.call('HINCRBY', key, 'attempts', -1)
    if attempts < 0 then redis.call('HSET', key, 'attempts', 0) end
    redis.call('HDEL', key, 'blocked_until')
  end
end
return 0
"""


class RedisStore:
    def __init__(self) -> None:
        client = get_redis()
        self._take = client.register_script(_TAKE)
        self._settle = client.register_script(_SETTLE)

    def _run(self, call: Any) -> Any:
        try:
            return call()
        except redis_errors() as exc:
            raise UpstreamError(
                f"the throttle store (Redis) is unavailable: {type(exc).__name__}"
            ) from exc

    def take(self, keys: Sequence[Key], now: datetime) -> float:
        if not keys:
            return 0.0
        args: list[float] = [now.timestamp()]
        for key in keys:
            limit = key.limit
            args += [limit.free, limit.base_seconds, limit.cap_seconds, limit.forget_seconds]
        names = [PREFIX + key.id for key in keys]
        return float(self._run(lambda: self._take(keys=names, args=args)))

    def settle(self, *, give_back: Sequence[Key], forget: Sequence[Key], now: datetime) -> None:
        if give_back or forget:
            names = [PREFIX + key.id for key in [*forget, *give_back]]
            self._run(lambda: self._settle(keys=names, args=[len(forget)]))
