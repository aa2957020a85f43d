"""Fixtures for real Redis and fakeredis.

    redis_url    the real Redis (REDIS_URL is not read: it is 127.0.0.1:6379, db 0); tests
                 that need it are skipped, with the reason, when it does not answer
    keys         a `Keys` whose prefix is unique to the test, so tests never share keys
    redis        a redis.asyncio client on the real Redis; the test's keys are deleted after
    make_redis   a factory of extra real clients (simulated processes), closed after
    fake_redis   a fakeredis FakeAsyncRedis (unit tests: no network)

Tests never FLUSHALL/FLUSHDB: the real Redis may be shared, so each test cleans up only
its own prefix (SCAN MATCH prefix:*).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis
import pytest
from redis import exceptions as redis_errors

from orchestrator.events import CustomEvent, EventOrigin, EventYield
from orchestrator.keys import Keys
from orchestrator.runs import StreamEntry
from orchestrator.store.connection import Redis, connect

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


def _redis_answers() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not _redis_answers():
        pytest.skip(f"real Redis not reachable at {REDIS_URL} (start one to run this test)")
    return REDIS_URL


@pytest.fixture
def keys() -> Keys:
    return Keys(prefix=f"test-{uuid.uuid4().hex[:12]}")


async def delete_prefix(client: Redis, keys: Keys) -> int:
    """Delete every key under `keys.prefix` (SCAN, never FLUSH)."""
    deleted = 0
    batch: list[Any] = []
    async for name in client.scan_iter(match=keys.pattern(), count=500):
        batch.append(name)
        if len(batch) >= 500:
            deleted += await client.delete(*batch)
            batch.clear()
    if batch:
        deleted += await client.delete(*batch)
    return deleted


@pytest.fixture
async def redis(redis_url: str, keys: Keys) -> AsyncIterator[Redis]:
    client = connect(redis_url)
    try:
        yield client
    finally:
        cleaner = connect(redis_url)
        try:
            await delete_prefix(cleaner, keys)
        finally:
            await cleaner.aclose()
            await client.aclose()


@pytest.fixture
async def make_redis(redis_url: str, redis: Redis) -> AsyncIterator[Callable[..., Redis]]:
    """Extra real-Redis clients (e.g. one per simulated process); closed at teardown.

    `make_redis(client_name="x")` names the connections so a test can kill just them.
    """
    made: list[Redis] = []

    def make(**kw: Any) -> Redis:
        client = connect(redis_url, **kw)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


async def kill_connections(admin: Redis, client_name: str) -> int:
    """Drop every server connection named `client_name` (and only those: the server is
    shared, so never `CLIENT KILL TYPE normal`)."""
    killed = 0
    for info in await admin.client_list():
        if info.get("name") == client_name:
            killed += await admin.client_kill_filter(_id=info["id"], skipme=True)
    return killed


@pytest.fixture
async def fake_redis() -> AsyncIterator[Any]:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    try:
        yield client
    finally:
        await client.aclose()


def event_output(i: int, *, session_id: str = "s1", call: str = "call-1") -> EventYield:
    """A small event output whose payload is `i` and whose event_seq is `i`."""
    return EventYield(
        event=CustomEvent(event_name="tick", data=i),
        origin=EventOrigin(session_id=session_id, agent_call_id=call, event_seq=i),
    )


def payloads(entries: list[StreamEntry]) -> list[Any]:
    """The `data` of each event entry, in order (to compare streams by content)."""
    out = []
    for entry in entries:
        if isinstance(entry.output, EventYield) and isinstance(entry.output.event, CustomEvent):
            out.append(entry.output.event.data)
    return out


class FlakyFakeRedis(fakeredis.FakeAsyncRedis):
    """fakeredis whose next `lose_replies` transactions run but then "lose" their reply,
    the worst case for a retrying writer: it cannot tell whether the write happened."""

    lose_replies = 0

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        run = pipe.execute
        client = self

        async def execute(raise_on_error: bool = True) -> Any:
            result = await run(raise_on_error)
            if client.lose_replies > 0:
                client.lose_replies -= 1
                raise redis_errors.ConnectionError("connection dropped before the reply")
            return result

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe
