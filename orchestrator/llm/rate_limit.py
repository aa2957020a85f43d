"""Request rate limits for one model, behind a one-method seam.

`OpenAICompatible` only ever calls `await limiter.acquire()` before each HTTP attempt. The
in-process `TokenBucket` limits one instance; a limiter shared across workers (through
Redis) implements the same Protocol and is passed in instead.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class RateLimiter(Protocol):
    """Waits until one more request may be sent."""

    async def acquire(self) -> None: ...


class Unlimited:
    """The limiter used when no rate limit is configured: never waits."""

    async def acquire(self) -> None:
        return None


class TokenBucket:
    """A classic token bucket: up to `capacity` requests in a burst, `refill_rate` per second
    after that. Waiters are served in arrival order."""

    def __init__(self, capacity: float, refill_rate: float) -> None:
        if capacity < 1 or refill_rate <= 0:
            raise ValueError(
                f"token bucket needs capacity >= 1 and refill_rate > 0, "
                f"got capacity={capacity}, refill_rate={refill_rate}"
            )
        self.capacity = float(capacity)
        self.refill_rate = float(refill_rate)
        self._tokens = self.capacity
        self._updated = time.monotonic()
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    @property
    def tokens(self) -> float:
        """Tokens available right now (after refilling for the time that passed)."""
        self._refill()
        return self._tokens

    async def acquire(self) -> None:
        async with self._get_lock():
            self._refill()
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self.refill_rate)
                self._refill()
            self._tokens -= 1

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.refill_rate)
        self._updated = now

    def _get_lock(self) -> asyncio.Lock:
        # A lock belongs to one event loop; an instance built at import time may serve
        # several loops over its life (one per test, one per worker process).
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock
