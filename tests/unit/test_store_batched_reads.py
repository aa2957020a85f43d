"""BatchedReads: an MGET reply of the wrong length (Redis replies are untrusted: a proxy,
a broken server) fails every waiter with a `StoreError` instead of leaving them
waiting for ever."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.errors import StoreError
from orchestrator.store.ends import BatchedReads


class _ShortMget:
    async def mget(self, keys: list[str]) -> list[Any]:
        return [b"x"] * (len(keys) - 1)  # one value short


async def test_a_reply_of_the_wrong_length_fails_the_readers_instead_of_hanging() -> None:
    reads = BatchedReads(_ShortMget())  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="unexpected reply"):  # not a TimeoutError: no hang
        await asyncio.wait_for(asyncio.gather(reads.get("a"), reads.get("b")), 2.0)
