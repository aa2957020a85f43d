"""The turn's chunk reader (`_Chunks`): whatever ends the model's stream reaches the turn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from orchestrator.runtime.loop import _Chunks
from orchestrator.signals import AbortSignal

pytestmark = pytest.mark.timeout(10)


async def _stream_raising(error: BaseException) -> AsyncIterator[Any]:
    yield {"choices": []}
    raise error


@pytest.mark.parametrize("error", [RuntimeError("model stream broke"), asyncio.CancelledError()])
async def test_a_stream_that_raises_ends_next_instead_of_hanging(error: BaseException) -> None:
    chunks = _Chunks(_stream_raising(error), AbortSignal())
    try:
        assert await asyncio.wait_for(chunks.next(), 2) == {"choices": []}
        with pytest.raises(type(error)):
            await asyncio.wait_for(chunks.next(), 2)
    finally:
        await chunks.aclose()
