"""Session streams on the real Redis: batching, flush, resume, fan-out, wake-up latency,
malformed entries, and dropped connections on both the writing and the reading side."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.runs import RunStatus, StatusEntry, StreamEntry
from orchestrator.store.connection import Redis
from orchestrator.store.streams import EventPublisher, StreamReader
from tests.fixtures_redis import event_output, kill_connections, payloads

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]


async def _publish_in_bursts(publisher: EventPublisher, n: int, burst: int = 50) -> None:
    """Publish n events, yielding to the loop every `burst` (like a busy agent)."""
    for i in range(n):
        publisher.publish(event_output(i))
        if i % burst == burst - 1:
            await asyncio.sleep(0)


async def test_many_publishes_go_out_in_few_batches_in_order(redis: Redis, keys: Keys) -> None:
    publisher = EventPublisher(redis, keys, session_id="s1", run_id="r1")
    await _publish_in_bursts(publisher, 5000)
    await publisher.flush()
    assert publisher.stats.delivered == 5000
    assert publisher.stats.batches < 5000 / 10
    entries = [e async for e in StreamReader(redis, keys).tail("s1", follow=False)]
    assert payloads(entries) == list(range(5000))


async def test_flush_returns_once_everything_published_is_in_redis(
    redis: Redis, keys: Keys, make_redis: Callable[..., Redis]
) -> None:
    publisher = EventPublisher(redis, keys, session_id="s1", run_id="r1")
    observer = make_redis()
    for round_ in range(1, 6):
        for i in range(100):
            publisher.publish(event_output(i))
        await publisher.flush()
        assert await observer.xlen(keys.events("s1")) == 100 * round_


async def test_an_idle_publisher_sends_at_once(redis: Redis, keys: Keys) -> None:
    publisher = EventPublisher(redis, keys, session_id="s1", run_id="r1")
    reader = StreamReader(redis, keys)
    waiting = asyncio.create_task(reader.read("s1", after="$", block_ms=2000))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    publisher.publish(event_output(0))
    entries = await asyncio.wait_for(waiting, timeout=2)
    assert payloads(entries) == [0]
    assert time.perf_counter() - started < 0.1
    await publisher.close(expire=True)


async def test_reader_resumes_from_the_middle_without_loss_or_repeat(
    redis: Redis, keys: Keys
) -> None:
    publisher = EventPublisher(redis, keys, session_id="s1", run_id="r1")
    await _publish_in_bursts(publisher, 1000)
    await publisher.flush()
    reader = StreamReader(redis, keys)
    first: list[StreamEntry] = []
    async for entry in reader.tail("s1", follow=False, count=64):
        first.append(entry)
        if len(first) == 417:
            break
    rest = [e async for e in reader.tail("s1", after=first[-1].id, follow=False)]
    assert payloads(first) + payloads(rest) == list(range(1000))


async def test_two_concurrent_readers_both_get_everything(
    redis: Redis, keys: Keys, make_redis: Callable[..., Redis]
) -> None:
    total = 2000

    async def read_all(client: Redis) -> list[Any]:
        got: list[StreamEntry] = []
        async for entry in StreamReader(client, keys).tail("s1", block_ms=1000):
            got.append(entry)
            if len(got) == total:
                break
        return payloads(got)

    readers = [asyncio.create_task(read_all(make_redis())) for _ in range(2)]
    await asyncio.sleep(0.05)
    publisher = EventPublisher(redis, keys, session_id="s1", run_id="r1")
    await _publish_in_bursts(publisher, total, burst=7)
    await publisher.flush()
    results = await asyncio.wait_for(asyncio.gather(*readers), timeout=10)
    assert results == [list(range(total)), list(range(total))]


async def test_a_blocked_reader_is_woken_promptly(
    redis: Redis, keys: Keys, make_redis: Callable[..., Redis]
) -> None:
    reader = StreamReader(make_redis(), keys)
    publisher = EventPublisher(redis, keys, session_id="s1", run_id="r1")
    latencies = []
    for i in range(5):
        tail = reader.tail("s1", after="$", block_ms=5000)
        waiting = asyncio.ensure_future(anext(tail))
        await asyncio.sleep(0.02)  # the reader is blocked in XREAD now
        started = time.perf_counter()
        publisher.publish(event_output(i))
        entry = await asyncio.wait_for(waiting, timeout=2)
        latencies.append(time.perf_counter() - started)
        await tail.aclose()
        assert payloads([entry]) == [i]
    assert max(latencies) < 0.1, latencies


async def test_a_malformed_entry_written_into_the_stream_is_skipped(
    redis: Redis, keys: Keys
) -> None:
    publisher = EventPublisher(redis, keys, session_id="s1", run_id="r1")
    publisher.publish(event_output(0))
    await publisher.flush()
    stream = keys.events("s1")
    await redis.xadd(stream, {"v": "1", "kind": "event", "run": "r1", "data": "{broken"})
    await redis.xadd(stream, {"v": "1", "kind": "gossip", "run": "r1", "data": "{}"})
    await redis.xadd(stream, {"hello": "world"})
    publisher.publish(event_output(1))
    publisher.publish_status(StatusEntry(run_id="r1", status=RunStatus.COMPLETED))
    await publisher.flush()
    entries = [e async for e in StreamReader(redis, keys).tail("s1", follow=False)]
    assert payloads(entries) == [0, 1]
    assert entries[-1].status is not None
    assert entries[-1].status.status == RunStatus.COMPLETED


async def test_dropped_connections_during_publishing_lose_and_repeat_nothing(
    redis: Redis, keys: Keys, make_redis: Callable[..., Redis]
) -> None:
    name = f"{keys.prefix}-publisher"
    publisher = EventPublisher(
        make_redis(client_name=name),
        keys,
        session_id="s1",
        run_id="r1",
        retry_delays_s=(0.01, 0.02, 0.05, 0.1, 0.2, 0.4),
    )
    total, killed = 3000, 0
    for i in range(total):
        publisher.publish(event_output(i))
        if i % 20 == 19:
            await asyncio.sleep(0)
        if i % 500 == 250:
            killed += await kill_connections(redis, name)
    await publisher.flush()
    assert killed > 0
    entries = [e async for e in StreamReader(redis, keys).tail("s1", follow=False)]
    assert payloads(entries) == list(range(total))


async def test_flush_survives_the_connection_pool_being_closed(
    redis: Redis, keys: Keys, make_redis: Callable[..., Redis]
) -> None:
    client = make_redis()
    publisher = EventPublisher(client, keys, session_id="s1", run_id="r1")
    publisher.publish(event_output(0))
    await publisher.flush()
    await client.connection_pool.disconnect()
    publisher.publish(event_output(1))
    await publisher.flush()
    entries = [e async for e in StreamReader(redis, keys).tail("s1", follow=False)]
    assert payloads(entries) == [0, 1]


async def test_a_tail_survives_its_connection_being_killed(
    redis: Redis, keys: Keys, make_redis: Callable[..., Redis]
) -> None:
    name = f"{keys.prefix}-reader"
    reader = StreamReader(make_redis(client_name=name), keys, reconnect_backoff_s=0.01)
    total = 600
    got: list[StreamEntry] = []

    async def follow() -> None:
        async for entry in reader.tail("s1", block_ms=1000, count=50):
            got.append(entry)
            if len(got) == total:
                return

    task = asyncio.create_task(follow())
    publisher = EventPublisher(redis, keys, session_id="s1", run_id="r1")
    killed = 0
    for chunk in range(6):
        for i in range(chunk * 100, chunk * 100 + 100):
            publisher.publish(event_output(i))
        await publisher.flush()
        await asyncio.sleep(0.02)
        killed += await kill_connections(redis, name)
    await asyncio.wait_for(task, timeout=10)
    assert killed > 0
    assert payloads(got) == list(range(total))
