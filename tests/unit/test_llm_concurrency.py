"""Many concurrent calls on one model: requests wait for a slot instead of failing."""

from __future__ import annotations

import asyncio
import time

import pytest

from orchestrator.errors import ConfigError
from orchestrator.llm import OpenAICompatible
from tests.fixtures_llm import MockLLMFactory

LATENCY_MS = 100


def _script() -> dict[str, object]:
    return {
        "model": "scripted",
        "latency": {"first_token_ms": LATENCY_MS, "token_ms": 0},
        "rules": [],
        "fallback": {"content": "ok then"},
    }


async def _text(llm: OpenAICompatible) -> str:
    parts: list[str] = []
    async for chunk in llm.chat_stream([{"role": "user", "content": "hi"}]):
        for choice in chunk.get("choices", []):
            parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


@pytest.mark.timeout(30)
async def test_requests_beyond_the_bound_wait_for_a_slot_and_none_fails(
    mock_llm: MockLLMFactory,
) -> None:
    server = mock_llm(_script())
    # No retries, and a timeout shorter than the queue: a request waiting for a
    # connection must neither time out nor be retried.
    llm = OpenAICompatible(
        "", "scripted", server.base_url, max_retries=0, timeout=0.5, max_concurrent_requests=4
    )
    calls = 24
    try:
        started = time.monotonic()
        async with asyncio.timeout(20):
            texts = await asyncio.gather(*(_text(llm) for _ in range(calls)))
        elapsed = time.monotonic() - started
    finally:
        await llm.aclose()
    assert texts == ["ok then"] * calls
    assert len(server.requests()) == calls  # one request each: nothing was retried
    # At most 4 at once, each at least LATENCY_MS: the calls ran in >= 6 waves.
    assert elapsed >= (calls / 4) * LATENCY_MS / 1000 * 0.9


def test_the_bound_must_allow_a_request() -> None:
    with pytest.raises(ConfigError):
        OpenAICompatible("", "scripted", "http://127.0.0.1:1/v1", max_concurrent_requests=0)
