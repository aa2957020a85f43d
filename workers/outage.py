"""Redis outages are weather: a worker's long-lived tasks wait them out instead of dying.

`Outage` is one task's view of Redis. `failed(exc)` says how long to wait before the next
try (capped exponential backoff) and logs the outage once, when it begins, instead of on
every failed try; `recovered()` logs its end, with how long it lasted. `until_available`
retries one store call that way until it goes through.

The retry policy of the worker lives here, in one place.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from orchestrator.errors import StoreUnavailable

__all__ = ["Outage", "until_available"]

_log = structlog.get_logger(__name__)

T = TypeVar("T")


class Outage:
    """Backoff and once-per-outage logging for one task that talks to Redis."""

    def __init__(self, task: str, *, first_delay_s: float = 0.05, max_delay_s: float = 1.0) -> None:
        self.task = task
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.failures = 0
        self.down_since: float | None = None
        self.outages = 0  # how many outages this task has seen (tests, metrics)

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException) -> float:
        """Note a failed try; returns the delay before the next one."""
        self.failures += 1
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.outages += 1
            _log.warning(
                "redis unavailable; retrying until it is back", task=self.task, error=str(exc)
            )
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** min(self.failures - 1, 16))

    def recovered(self) -> None:
        """Note a successful try (logs the end of an outage, if there was one)."""
        if self.down_since is None:
            return
        lasted = time.monotonic() - self.down_since
        _log.warning(
            "redis reachable again", task=self.task, down_s=round(lasted, 1), retries=self.failures
        )
        self.down_since = None
        self.failures = 0


async def until_available(call: Callable[[], Awaitable[T]], outage: Outage) -> T:
    """`await call()`, retried while Redis is unreachable (`StoreUnavailable`), with the
    outage's backoff. Other errors propagate; cancellation ends the wait."""
    while True:
        try:
            result = await call()
        except StoreUnavailable as exc:
            await asyncio.sleep(outage.failed(exc))
            continue
        outage.recovered()
        return result
