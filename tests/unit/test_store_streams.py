"""EventPublisher and StreamReader on fakeredis: batching, flush, retries, decoding."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import fakeredis
import pytest
from structlog.testing import capture_logs

from orchestrator.errors import StoreError, StoreUnavailable
from orchestrator.events import EventYield, ResponseYield
from orchestrator.keys import Keys
from orchestrator.runs import RunStatus, StatusEntry
from orchestrator.store.streams import EventPublisher, StreamReader
from tests.fixtures_redis import FlakyFakeRedis, event_output, payloads

pytestmark = pytest.mark.timeout(10)


def _publisher(redis: Any, keys: Keys, **kw: Any) -> EventPublisher:
    kw.setdefault("retry_delays_s", (0.01, 0.02, 0.04))
    return EventPublisher(redis, keys, session_id="s1", run_id="r1", **kw)


async def _all(redis: Any, keys: Keys, **kw: Any) -> list[Any]:
    return [e async for e in StreamReader(redis, keys).tail("s1", follow=False, **kw)]


async def test_publish_does_not_touch_redis_until_the_loop_runs(
    fake_redis: Any, keys: Keys
) -> None:
    publisher = _publisher(fake_redis, keys)
    publisher.publish(event_output(0))
    assert await fake_redis.exists(keys.events("s1")) == 0
    assert publisher.pending == 1
    await publisher.flush()
    assert publisher.pending == 0
    assert await fake_redis.xlen(keys.events("s1")) == 1


async def test_outputs_published_together_go_in_one_batch_in_order(
    fake_redis: Any, keys: Keys
) -> None:
    publisher = _publisher(fake_redis, keys)
    for i in range(50):
        publisher.publish(event_output(i))
    await publisher.flush()
    assert publisher.stats.batches == 1
    assert publisher.stats.largest_batch == 50
    assert payloads(await _all(fake_redis, keys)) == list(range(50))


async def test_entries_carry_version_kind_run_and_json_data(fake_redis: Any, keys: Keys) -> None:
    publisher = _publisher(fake_redis, keys)
    publisher.publish(ResponseYield(response="done"))
    publisher.publish_status(StatusEntry(run_id="r1", status=RunStatus.COMPLETED))
    await publisher.flush()
    raw = await fake_redis.xrange(keys.events("s1"))
    fields = [entry[1] for entry in raw]
    assert [f[b"kind"] for f in fields] == [b"response", b"status"]
    assert all(f[b"v"] == b"1" and f[b"run"] == b"r1" for f in fields)
    assert json.loads(fields[0][b"data"])["response"] == "done"
    assert json.loads(fields[1][b"data"])["status"] == "completed"


async def test_flush_with_nothing_pending_returns_at_once(fake_redis: Any, keys: Keys) -> None:
    await asyncio.wait_for(_publisher(fake_redis, keys).flush(), timeout=0.1)


async def test_outputs_published_during_a_flush_go_in_the_next_batch(
    fake_redis: Any, keys: Keys
) -> None:
    publisher = _publisher(fake_redis, keys)
    publisher.publish(event_output(0))
    first = asyncio.ensure_future(publisher.flush())
    await asyncio.sleep(0)  # the first batch is now in flight
    for i in range(1, 10):
        publisher.publish(event_output(i))
    await first
    await publisher.flush()
    assert publisher.stats.batches == 2
    assert payloads(await _all(fake_redis, keys)) == list(range(10))


async def test_last_seq_is_the_highest_event_seq_per_agent_call(
    fake_redis: Any, keys: Keys
) -> None:
    publisher = _publisher(fake_redis, keys)
    for i in (3, 7, 5):
        publisher.publish(event_output(i, call="a"))
    publisher.publish(event_output(2, call="b"))
    assert await publisher.last_seq("a") == 7  # known locally before the flush
    await publisher.flush()
    fresh = _publisher(fake_redis, keys)
    assert await fresh.last_seq("a") == 7
    assert await fresh.last_seq("b") == 2
    assert await fresh.last_seq("nobody") is None


async def test_close_with_expire_sets_the_ttl_and_refuses_more_outputs(
    fake_redis: Any, keys: Keys
) -> None:
    publisher = _publisher(fake_redis, keys, ttl_after_end_s=60)
    publisher.publish(event_output(1))
    await publisher.close(expire=True)
    assert 0 < await fake_redis.ttl(keys.events("s1")) <= 60
    assert 0 < await fake_redis.ttl(keys.seqs("s1")) <= 60
    with pytest.raises(StoreError, match="closed"):
        publisher.publish(event_output(2))


async def test_close_without_expire_keeps_the_idle_ttl(fake_redis: Any, keys: Keys) -> None:
    publisher = _publisher(fake_redis, keys, ttl_after_end_s=60, idle_ttl_s=3600)
    publisher.publish(event_output(1))
    await publisher.close(expire=False)
    assert await fake_redis.ttl(keys.events("s1")) > 60


async def test_a_brief_outage_is_retried_without_loss() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeAsyncRedis(server=server)
    keys = Keys("t")
    publisher = _publisher(redis, keys, retry_delays_s=(0.02, 0.05, 0.1, 0.2))
    server.connected = False
    for i in range(5):
        publisher.publish(event_output(i))
    asyncio.get_running_loop().call_later(0.05, setattr, server, "connected", True)
    await publisher.flush()
    assert publisher.stats.retries >= 1
    assert payloads(await _all(redis, keys)) == list(range(5))
    await redis.aclose()


async def test_a_long_outage_fails_flush_but_keeps_the_batch_for_the_next_one() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeAsyncRedis(server=server)
    keys = Keys("t")
    publisher = _publisher(redis, keys)
    server.connected = False
    publisher.publish(event_output(0))
    with pytest.raises(StoreUnavailable):
        await publisher.flush()
    assert publisher.stats.failures == 1
    assert publisher.last_error is not None
    server.connected = True
    publisher.publish(event_output(1))
    await publisher.flush()
    assert payloads(await _all(redis, keys)) == [0, 1]
    await redis.aclose()


async def test_a_lost_reply_does_not_write_the_batch_twice() -> None:
    redis = FlakyFakeRedis()
    keys = Keys("t")
    publisher = _publisher(redis, keys)
    redis.lose_replies = 1
    for i in range(3):
        publisher.publish(event_output(i))
    await publisher.flush()
    publisher.publish(event_output(3))
    await publisher.flush()
    assert publisher.stats.retries == 1
    assert payloads(await _all(redis, keys)) == [0, 1, 2, 3]
    await redis.aclose()


async def test_a_lost_reply_after_all_retries_is_still_not_duplicated() -> None:
    redis = FlakyFakeRedis()
    keys = Keys("t")
    publisher = _publisher(redis, keys, retry_delays_s=())
    redis.lose_replies = 1
    publisher.publish(event_output(0))
    with pytest.raises(StoreUnavailable):
        await publisher.flush()
    publisher.publish(event_output(1))
    await publisher.flush()
    assert payloads(await _all(redis, keys)) == [0, 1]
    await redis.aclose()


async def test_a_refused_command_fails_the_flush(fake_redis: Any, keys: Keys) -> None:
    await fake_redis.set(keys.events("s1"), "not a stream")
    publisher = _publisher(fake_redis, keys)
    publisher.publish(event_output(0))
    with pytest.raises(StoreError) as caught:
        await publisher.flush()
    assert not isinstance(caught.value, StoreUnavailable)
    assert caught.value.__cause__ is not None


async def test_maxlen_trims_the_stream_approximately(fake_redis: Any, keys: Keys) -> None:
    publisher = _publisher(fake_redis, keys, maxlen=10)
    for i in range(300):
        publisher.publish(event_output(i))
    await publisher.flush()
    assert await fake_redis.xlen(keys.events("s1")) < 300


# -- reader ------------------------------------------------------------------------------


async def _published(redis: Any, keys: Keys, n: int, run_id: str = "r1") -> None:
    publisher = EventPublisher(redis, keys, session_id="s1", run_id=run_id)
    for i in range(n):
        publisher.publish(event_output(i))
    await publisher.flush()


async def test_read_pages_from_the_start_and_resumes_after_an_id(
    fake_redis: Any, keys: Keys
) -> None:
    await _published(fake_redis, keys, 10)
    reader = StreamReader(fake_redis, keys)
    first = await reader.read("s1", count=4)
    rest = await reader.read("s1", after=first[-1].id)
    assert payloads(first) == [0, 1, 2, 3]
    assert payloads(rest) == list(range(4, 10))


async def test_decoded_outputs_carry_their_stream_id(fake_redis: Any, keys: Keys) -> None:
    await _published(fake_redis, keys, 2)
    entries = await StreamReader(fake_redis, keys).read("s1")
    assert all(isinstance(e.output, EventYield) for e in entries)
    assert [e.output.stream_id for e in entries if e.output] == [e.id for e in entries]


async def test_read_after_dollar_without_blocking_returns_nothing(
    fake_redis: Any, keys: Keys
) -> None:
    await _published(fake_redis, keys, 3)
    assert await StreamReader(fake_redis, keys).read("s1", after="$") == []


async def test_read_of_a_missing_stream_is_empty(fake_redis: Any, keys: Keys) -> None:
    assert await StreamReader(fake_redis, keys).read("nobody") == []


@pytest.mark.parametrize(
    "fields",
    [
        {"v": "1", "kind": "event", "run": "r1", "data": "{not json"},
        {"v": "1", "kind": "mystery", "run": "r1", "data": "{}"},
        {"v": "2", "kind": "event", "run": "r1", "data": "{}"},
        {"v": "1", "kind": "event", "run": "r1"},
        {"v": "1", "kind": "event", "run": "r1", "data": '{"type": "event"}'},
        {"v": "1", "kind": "event", "run": "r1", "data": '{"type": "response"}'},
        {"v": "1", "kind": "status", "run": "r1", "data": '{"status": "sleeping"}'},
        {"v": b"\xff", "kind": "event", "run": "r1", "data": "{}"},
        {"garbage": "x"},
    ],
)
async def test_a_malformed_entry_is_skipped_with_a_warning(
    fake_redis: Any, keys: Keys, fields: dict[str, Any]
) -> None:
    await _published(fake_redis, keys, 1)
    await fake_redis.xadd(keys.events("s1"), fields)
    await _published(fake_redis, keys, 1)
    with capture_logs() as logs:
        entries = await _all(fake_redis, keys)
    assert payloads(entries) == [0, 0]
    assert [log["event"] for log in logs] == ["stream.malformed_entry"]


async def test_read_page_resumes_past_skipped_entries(fake_redis: Any, keys: Keys) -> None:
    await _published(fake_redis, keys, 1)
    bad_id = await fake_redis.xadd(keys.events("s1"), {"garbage": "x"})
    page = await StreamReader(fake_redis, keys).read_page("s1")
    assert len(page.entries) == 1
    assert page.last_id == bad_id.decode()


async def test_tail_filters_by_run_and_stops_when_exhausted(fake_redis: Any, keys: Keys) -> None:
    await _published(fake_redis, keys, 3, run_id="r1")
    await _published(fake_redis, keys, 2, run_id="r2")
    entries = await _all(fake_redis, keys, run_id="r2")
    assert {e.run_id for e in entries} == {"r2"}
    assert payloads(entries) == [0, 1]


async def test_tail_can_stop_at_the_runs_terminal_status(fake_redis: Any, keys: Keys) -> None:
    publisher = _publisher(fake_redis, keys)
    publisher.publish(event_output(0))
    publisher.publish_status(StatusEntry(run_id="r1", status=RunStatus.RUNNING))
    publisher.publish_status(StatusEntry(run_id="r1", status=RunStatus.COMPLETED))
    publisher.publish(event_output(1))
    await publisher.flush()
    reader = StreamReader(fake_redis, keys)
    entries = [e async for e in reader.tail("s1", run_id="r1", stop_at_terminal=True)]
    assert [e.kind for e in entries] == ["event", "status", "status"]


async def test_tail_follows_new_entries(fake_redis: Any, keys: Keys) -> None:
    reader = StreamReader(fake_redis, keys)
    got: list[Any] = []

    async def follow() -> None:
        async for entry in reader.tail("s1", after="$", block_ms=100):
            got.append(entry)
            if len(got) == 3:
                return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    await _published(fake_redis, keys, 3)
    await asyncio.wait_for(task, timeout=2)
    assert payloads(got) == [0, 1, 2]


async def test_tail_gives_up_after_repeated_connection_failures() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeAsyncRedis(server=server)
    server.connected = False
    reader = StreamReader(redis, Keys("t"), reconnect_attempts=2, reconnect_backoff_s=0.001)
    with pytest.raises(StoreUnavailable):
        async for _ in reader.tail("s1"):
            pass
    await redis.aclose()


async def test_tail_rides_out_a_brief_outage() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeAsyncRedis(server=server)
    keys = Keys("t")
    await _published(redis, keys, 2)
    server.connected = False
    asyncio.get_running_loop().call_later(0.05, setattr, server, "connected", True)
    reader = StreamReader(redis, keys, reconnect_backoff_s=0.01)
    entries = [e async for e in reader.tail("s1", follow=False)]
    assert payloads(entries) == [0, 1]
    await redis.aclose()
