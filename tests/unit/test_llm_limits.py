"""The pieces behind retries and limits: backoff, Retry-After, token bucket, key pool."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from orchestrator.llm import APIKeyPool, OpenAICompatible, RetryPolicy, TokenBucket
from orchestrator.llm.key_pool import NoUsableKey
from orchestrator.llm.retry import parse_retry_after


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    policy = RetryPolicy(max_retries=10, retry_delay=1.0, max_retry_delay=5.0, rng=random.Random(7))
    for retry in range(10):
        ceiling = min(5.0, 2**retry)
        delays = [policy.delay(retry) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # spread over the whole range, not fixed


def test_retry_after_wins_but_is_capped() -> None:
    policy = RetryPolicy(retry_delay=100.0, max_retry_delay=10.0)
    assert policy.delay(0, retry_after=0.2) == 0.2
    assert policy.delay(0, retry_after=60) == 10.0


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.25") == 0.25
    assert (
        parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30
    )
    assert (
        parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0
    )
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


async def test_token_bucket_allows_a_burst_then_waits_for_refill() -> None:
    bucket = TokenBucket(capacity=2, refill_rate=10)
    started = time.monotonic()
    await bucket.acquire()
    await bucket.acquire()
    assert time.monotonic() - started < 0.05
    await bucket.acquire()
    assert time.monotonic() - started >= 0.09


def test_token_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="capacity"):
        TokenBucket(0, 1)


def test_key_pool_prefers_fewest_in_flight_then_least_recent() -> None:
    pool = APIKeyPool(["a", "b", "c"])
    assert [pool.acquire() for _ in range(3)] == ["a", "b", "c"]
    pool.release("b")
    assert pool.acquire() == "b"
    for key in "abc":
        pool.release(key)
    pool.release("b")
    assert pool.acquire() == "a"  # all idle: least recently used first


def test_key_pool_skips_benched_keys_and_runs_out() -> None:
    pool = APIKeyPool(["a", "b"], "prov")
    pool.bench("a", status=401, model="m")
    assert [pool.acquire() for _ in range(3)] == ["b", "b", "b"]
    pool.bench("b", status=403, model="m")
    with pytest.raises(NoUsableKey):
        pool.acquire()


def test_simplellmfunc_style_construction_with_a_key_pool() -> None:
    pool = APIKeyPool(["k1", "k2"], "openai-gpt")
    model = OpenAICompatible(api_key_pool=pool, model_name="gpt", base_url="http://x/v1")
    assert model.key_pool is pool
    assert repr(model) == "OpenAICompatible(model_name='gpt', base_url='http://x/v1')"
