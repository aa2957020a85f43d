"""`RedisRateLimiter` on the real Redis: several limiters with one name (as in several
workers) share one window of requests and tokens, and the window key expires."""

from __future__ import annotations

import asyncio
import time

import pytest

from orchestrator.keys import Keys
from orchestrator.store.connection import Redis
from orchestrator.store.rate_limits import RedisRateLimiter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]


def limiter(redis: Redis, keys: Keys, **limits: float) -> RedisRateLimiter:
    settings: dict[str, float] = {"max_requests": 100, "max_tokens": 10_000, "period_s": 0.5}
    settings.update(limits)
    return RedisRateLimiter(
        redis,
        keys,
        "shared",
        max_requests=int(settings["max_requests"]),
        max_tokens=int(settings["max_tokens"]),
        period_s=settings["period_s"],
        margin_s=settings.get("margin_s", 0.0),
    )


async def test_limiters_with_one_name_share_the_request_limit(redis: Redis, keys: Keys) -> None:
    group = [limiter(redis, keys, max_requests=3) for _ in range(3)]
    stamps: list[float] = []

    async def send(which: RedisRateLimiter) -> None:
        await which.acquire(1)
        stamps.append(time.monotonic())

    await asyncio.gather(*(send(group[i % 3]) for i in range(9)))
    stamps.sort()
    assert all(stamps[i + 3] - stamps[i] >= 0.5 - 0.01 for i in range(len(stamps) - 3))
    assert stamps[-1] - stamps[0] >= 1.0 - 0.01  # 9 requests, 3 per 0.5 s: 2 waits
    assert sum(one.waits for one in group) > 0


async def test_tokens_are_limited_too_and_a_huge_request_goes_alone(
    redis: Redis, keys: Keys
) -> None:
    one = limiter(redis, keys, max_tokens=100)
    started = time.monotonic()
    await one.acquire(70)
    await one.acquire(70)  # 140 > 100: waits for the first to leave the window
    assert time.monotonic() - started >= 0.5 - 0.01
    started = time.monotonic()
    await one.acquire(10**6)  # more than the limit: admitted once the window is empty
    assert time.monotonic() - started >= 0.5 - 0.01


async def test_the_window_key_expires_after_one_period_and_margin(redis: Redis, keys: Keys) -> None:
    one = limiter(redis, keys, period_s=0.5, margin_s=0.25)
    await one.acquire(5)
    for key in (keys.rate_window("shared"), keys.rate_tokens("shared")):
        ttl_ms = await redis.pttl(key)
        assert 0 < ttl_ms <= 750
    assert await redis.get(keys.rate_tokens("shared")) == b"5"


async def test_the_token_sum_follows_requests_leaving_the_window(redis: Redis, keys: Keys) -> None:
    one = limiter(redis, keys, max_tokens=100, period_s=0.3)
    await one.acquire(60)
    await asyncio.sleep(0.35)  # the first request has left the window
    started = time.monotonic()
    await one.acquire(60)  # 60 + 0 <= 100: no wait
    assert time.monotonic() - started < 0.2
    assert await redis.get(keys.rate_tokens("shared")) == b"60"
