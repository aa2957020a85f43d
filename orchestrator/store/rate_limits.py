"""`RedisRateLimiter`: requests and tokens per period, enforced for every process that
shares the name, by one atomic Lua script (a sliding-window log).

Each request is a member `<id>:<tokens>` of a sorted set scored by the time it was let
through (Redis `TIME`, so the workers' clocks do not matter), and the window's token sum
is kept beside it. The script drops the members older than one period (subtracting
their tokens), and either adds the request (when both the request count
and the token sum stay within the limits) or answers how many milliseconds until they
would. So no window of one period ever holds more than `max_requests` requests or
`max_tokens` tokens, whichever workers sent them. The key expires one period after the
last request. It implements `orchestrator.deluge.RequestLimiter`.

`margin_s` widens the window a little: requests are admitted here but counted by the
provider when they arrive, and the HTTP hop in between varies (a cold connection, a busy
machine). With the margin, requests LIMIT apart are admitted period + margin apart, so
they still arrive at least a period apart.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

from orchestrator.keys import Keys
from orchestrator.store.connection import translate_errors

# KEYS[1] window (zset), KEYS[2] tokens in the window (string);
# ARGV max_requests, max_tokens, period_ms, tokens, request id.
# O(log n) per call: expired members are read once (when they leave), the token sum is
# kept beside the window, and only the members a wait depends on are read.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max_requests = tonumber(ARGV[1])
local max_tokens = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local function used_by(member)
  return tonumber(string.match(member, ':(%d+)$')) or 0
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - period)
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if #expired > 0 then
  for i = 1, #expired do used = used - used_by(expired[i]) end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
end
local count = redis.call('ZCARD', KEYS[1])
if count == 0 then used = 0 end
local wait = 0
if count >= max_requests then
  local leaving = count - max_requests
  local oldest = redis.call('ZRANGE', KEYS[1], leaving, leaving, 'WITHSCORES')
  wait = tonumber(oldest[2]) + period - now
end
local excess = used + tokens - max_tokens
local start = 0
while excess > 0 and start < count do
  local page = redis.call('ZRANGE', KEYS[1], start, start + 99, 'WITHSCORES')
  for i = 1, #page, 2 do
    if excess <= 0 then break end
    excess = excess - used_by(page[i])
    wait = math.max(wait, tonumber(page[i + 1]) + period - now)
  end
  start = start + 100
end
if wait <= 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[5] .. ':' .. tokens)
  redis.call('SET', KEYS[2], used + tokens, 'PX', period)
  redis.call('PEXPIRE', KEYS[1], period)
  return 0
end
redis.call('SET', KEYS[2], used, 'PX', period)
return wait
"""


class RedisRateLimiter:
    """At most `max_requests` requests and `max_tokens` tokens in any `period_s` window
    (60: per minute) for every process using the same `name`."""

    def __init__(
        self,
        redis: Any,
        keys: Keys,
        name: str,
        *,
        max_requests: int,
        max_tokens: int,
        period_s: float = 60.0,
        margin_s: float = 0.0,
    ) -> None:
        if max_requests < 1 or max_tokens < 1 or period_s <= 0 or margin_s < 0:
            raise ValueError("limits must be positive")
        self._redis = redis
        self.key = keys.rate_window(name)
        self.tokens_key = keys.rate_tokens(name)
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.period_ms = max(1, round((period_s + margin_s) * 1000))
        self._script = redis.register_script(_ACQUIRE)
        self.waits = 0  # how many times acquire had to wait (for tests and metrics)

    async def acquire(self, tokens: int) -> None:
        """Return once a request of `tokens` tokens has been let through (a request larger
        than the whole token limit goes alone)."""
        tokens = min(max(int(tokens), 0), self.max_tokens)
        while True:
            async with translate_errors("rate limit"):
                wait_ms = int(
                    await self._script(
                        keys=[self.key, self.tokens_key],
                        args=[
                            self.max_requests,
                            self.max_tokens,
                            self.period_ms,
                            tokens,
                            uuid.uuid4().hex,
                        ],
                    )
                )
            if wait_ms <= 0:
                return
            self.waits += 1
            # a little jitter, so waiting workers do not all come back at the same moment
            await asyncio.sleep(wait_ms / 1000 + random.uniform(0, 0.005))
