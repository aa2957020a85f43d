"""Fixtures for real Redis and fakeredis.

    redis_url    the real Redis (REDIS_URL is not read: it is 127.0.0.1:6379, db 0); tests
                 that need it are skipped, with the reason, when it does not answer
    keys         a `Keys` whose prefix is unique to the test, so tests never share keys; in
                 a test that reaches the real Redis (`redis_url`), every key under the
                 prefix is deleted after the test, with arq's keys (outside the prefix) of
                 the jobs it left queued and of its runs' jobs
    redis        a redis.asyncio client on the real Redis
    make_redis   a factory of extra real clients (simulated processes), closed after
    fake_redis   a fakeredis FakeAsyncRedis (unit tests: no network)

Tests never FLUSHALL/FLUSHDB: the real Redis may be shared, so each test cleans up only
its own prefix (SCAN MATCH prefix:* + UNLINK).
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import fakeredis
import pytest
from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from redis import Redis as SyncRedis
from redis import exceptions as redis_errors

from orchestrator.events import CustomEvent, EventOrigin, EventYield
from orchestrator.keys import Keys
from orchestrator.runs import StreamEntry
from orchestrator.store.connection import Redis, connect
from orchestrator.store.queue import job_id

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
def keys(request: pytest.FixtureRequest) -> Iterator[Keys]:
    made = Keys(prefix=f"test-{uuid.uuid4().hex[:12]}")
    yield made
    # Torn down after every fixture that uses the prefix (workers, clients, the API); not
    # when the test was skipped for want of a server.
    if "redis_url" in request.fixturenames and _redis_answers():
        with SyncRedis.from_url(REDIS_URL) as client:
            delete_test_keys(client, made)


_ARQ_PREFIXES = (job_key_prefix, result_key_prefix, in_progress_key_prefix, retry_key_prefix)
_BATCH = 500


def run_job_ids(run_id: str, attempts: int, segment: int) -> list[str]:
    """The arq job ids a run may have had: each attempt, each segment up to the next one."""
    return [
        job_id(run_id, attempt, seg)
        for attempt in range(1, attempts + 1)
        for seg in range(segment + 2)
    ]


def _job_ids(raw_record: bytes | None) -> list[str]:
    """`run_job_ids` of a raw run record. Nothing for a record that is not a run's (tests
    write corrupt ones on purpose)."""
    try:
        record = json.loads(raw_record or b"")
        run_id, segment = str(record["run_id"]), int(record.get("segment") or 0)
        attempts = max(int(record.get("attempt") or 1), int(record.get("max_attempts") or 1))
    except (ValueError, TypeError, KeyError, AttributeError):
        return []
    return run_job_ids(run_id, attempts, segment)


def delete_test_keys(client: SyncRedis, keys: Keys) -> int:
    """Delete every key under `keys.prefix` (SCAN + UNLINK, never FLUSH), and arq's keys
    of the jobs still in its queue and of the runs whose records it holds."""
    names = list(client.scan_iter(match=keys.pattern(), count=1000))
    jobs = [j.decode() for j in client.zrange(keys.queue(), 0, -1)]
    runs = [n for n in names if n.startswith(keys.run("").encode())]
    for start in range(0, len(runs), _BATCH):
        for raw in client.mget(runs[start : start + _BATCH]):
            jobs.extend(_job_ids(raw))
    names.extend(f"{prefix}{jid}".encode() for jid in set(jobs) for prefix in _ARQ_PREFIXES)
    deleted = 0
    for start in range(0, len(names), _BATCH):
        deleted += client.unlink(*names[start : start + _BATCH])
    return deleted


async def delete_prefix(client: Redis, keys: Keys) -> int:
    """Delete every key under `keys.prefix` (SCAN + UNLINK, never FLUSH)."""
    deleted = 0
    batch: list[Any] = []
    async for name in client.scan_iter(match=keys.pattern(), count=500):
        batch.append(name)
        if len(batch) >= _BATCH:
            deleted += await client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += await client.unlink(*batch)
    return deleted


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url)
    try:
        yield client
    finally:
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
