"""Requests- and tokens-per-minute limits, behind a one-method seam.

`LLMClient` awaits `limiter.acquire(tokens)` before every HTTP attempt. `SlidingWindow`
limits one process; `orchestrator.store.rate_limits.RedisRateLimiter` implements the same
Protocol for every worker of a cluster together.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Protocol, runtime_checkable


@runtime_checkable
class RequestLimiter(Protocol):
    """Waits until one more request of about `tokens` tokens may be sent."""

    async def acquire(self, tokens: int) -> None: ...


class SlidingWindow:
    """At most `max_requests` requests and `max_tokens` tokens in any `period_s` window
    (60 s: per minute), in one process. Waiters are served in arrival order."""

    def __init__(self, max_requests: int, max_tokens: int, period_s: float = 60.0) -> None:
        if max_requests < 1 or max_tokens < 1 or period_s <= 0:
            raise ValueError("limits must be positive")
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.period_s = period_s
        self._sent: deque[tuple[float, int]] = deque()
        self._tokens = 0
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        tokens = min(max(tokens, 0), self.max_tokens)  # one huge request still goes, alone
        async with self._lock:
            while True:
                now = time.monotonic()
                self._expire(now)
                wait = self._wait_s(now, tokens)
                if wait <= 0:
                    self._sent.append((now, tokens))
                    self._tokens += tokens
                    return
                await asyncio.sleep(wait)

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0][0] <= now - self.period_s:
            self._tokens -= self._sent.popleft()[1]

    def _wait_s(self, now: float, tokens: int) -> float:
        wait = 0.0
        if len(self._sent) >= self.max_requests:
            wait = self._sent[-self.max_requests][0] + self.period_s - now
        excess = self._tokens + tokens - self.max_tokens
        for at, used in self._sent:
            if excess <= 0:
                break
            excess -= used
            wait = max(wait, at + self.period_s - now)
        return wait
