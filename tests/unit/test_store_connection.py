"""Redis errors become orchestrator errors in one place, chained to their cause."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from redis import exceptions as redis_errors

from orchestrator.errors import StoreError, StoreUnavailable
from orchestrator.store.connection import connect, optimistic, translate_errors


async def test_connection_errors_become_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="ping") as caught:
        async with translate_errors("ping"):
            raise redis_errors.ConnectionError("refused")
    assert isinstance(caught.value.__cause__, redis_errors.ConnectionError)


async def test_refused_commands_become_store_errors() -> None:
    with pytest.raises(StoreError) as caught:
        async with translate_errors("xadd"):
            raise redis_errors.ResponseError("WRONGTYPE")
    assert not isinstance(caught.value, StoreUnavailable)
    assert isinstance(caught.value.__cause__, redis_errors.ResponseError)


async def test_translate_errors_works_as_a_decorator() -> None:
    @translate_errors("decorated")
    async def failing() -> None:
        raise redis_errors.TimeoutError("slow")

    with pytest.raises(StoreUnavailable, match="decorated"):
        await failing()


async def test_other_errors_pass_through() -> None:
    with pytest.raises(KeyError):
        async with translate_errors("x"):
            raise KeyError("mine")


async def test_a_down_server_is_reported_as_unavailable() -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    client = fakeredis.FakeAsyncRedis(server=server)
    with pytest.raises(StoreUnavailable):
        async with translate_errors("get"):
            await client.get("k")
    await client.aclose()


async def test_connect_returns_a_bytes_client() -> None:
    client = connect("redis://127.0.0.1:1/0")
    assert client.connection_pool.connection_kwargs["decode_responses"] is False
    await client.aclose()


async def test_optimistic_gives_up_under_endless_contention(fake_redis: Any) -> None:
    async def body(pipe: Any) -> None:
        await pipe.get("k")
        await fake_redis.set("k", "changed by someone else")
        pipe.multi()
        pipe.set("k", "mine")

    with pytest.raises(StoreError, match="gave up"):
        await optimistic(fake_redis, ["k"], body, what="contended write", max_retries=3)
