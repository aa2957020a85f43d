"""`EventPublisher.hold()`: a turn that has answered holds what it publishes until its
end, which writes it in its own script (`take_last`); a `flush()` ends the hold."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.events import ResponseYield
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunStatus
from orchestrator.settings import Settings
from orchestrator.store.lifecycle import end_run
from orchestrator.store.runs import LeaseTable, RunStore
from orchestrator.store.streams import EventPublisher, StreamReader
from tests.fixtures_redis import event_output, payloads

pytestmark = pytest.mark.timeout(10)


async def _started(redis: Any, keys: Keys) -> EventPublisher:
    record = RunRecord(
        run_id="r1",
        session_id="s1",
        submitted_at=1000.0,
        agent="pkg:agent",
        status=RunStatus.RUNNING,
        attempt=1,
    )
    await RunStore(redis, keys).create(record)
    assert await LeaseTable(redis, keys).renew("r1", attempt=1, worker_id="w", ttl_s=60)
    publisher = EventPublisher(
        redis, keys, session_id="s1", run_id="r1", attempt=1, items_per_entry=64
    )
    await publisher.take_over()
    return publisher


async def _written(redis: Any, keys: Keys) -> list[Any]:
    return payloads(await StreamReader(redis, keys).read("s1"))


async def _settle() -> None:
    for _ in range(20):  # let any flusher task run and its script answer
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)


async def test_what_is_published_while_held_is_written_only_by_the_end(
    fake_redis: Any, keys: Keys
) -> None:
    publisher = await _started(fake_redis, keys)
    publisher.publish(event_output(0, call="r1"))
    await publisher.flush()
    publisher.hold()
    publisher.publish(event_output(1, call="r1"))
    publisher.publish(event_output(2, call="r1"))
    await _settle()
    assert await _written(fake_redis, keys) == [0]
    publisher.publish(ResponseYield(response="done"))
    batch = await publisher.take_last()
    assert batch is not None
    ended = await end_run(
        fake_redis,
        keys,
        Settings(),
        run_id="r1",
        session_id="s1",
        status=RunStatus.COMPLETED,
        attempt=1,
        release=True,
        drop_checkpoint=True,
        batch=batch,
    )
    assert ended is not None
    assert await _written(fake_redis, keys) == [0, 1, 2]
    entries = await StreamReader(fake_redis, keys).read("s1")
    # The held events and the response share the end's one stream entry.
    assert len({e.id.split(".")[0] for e in entries if e.output is not None}) == 2
    assert publisher.stats.batches == 2


async def test_a_flush_ends_the_hold(fake_redis: Any, keys: Keys) -> None:
    publisher = await _started(fake_redis, keys)
    publisher.hold()
    publisher.publish(event_output(0, call="r1"))
    await _settle()
    assert await _written(fake_redis, keys) == []
    await asyncio.wait_for(publisher.flush(), 5)
    assert await _written(fake_redis, keys) == [0]
    publisher.publish(event_output(1, call="r1"))
    await _settle()
    assert await _written(fake_redis, keys) == [0, 1]


async def test_a_batch_in_flight_when_the_hold_begins_is_still_written(
    fake_redis: Any, keys: Keys
) -> None:
    publisher = await _started(fake_redis, keys)
    publisher.publish(event_output(0, call="r1"))
    await asyncio.sleep(0)  # its batch is on its way
    publisher.hold()
    publisher.publish(event_output(1, call="r1"))
    await _settle()
    assert await _written(fake_redis, keys) == [0]
    assert (await publisher.take_last()) is not None


async def test_a_flush_waiting_when_the_hold_begins_still_returns(
    fake_redis: Any, keys: Keys
) -> None:
    """(From the review of the hold.) Another task's `flush()` that waits for outputs
    queued behind the batch in flight is not stranded by a hold that begins meanwhile."""
    publisher = await _started(fake_redis, keys)
    publisher.publish(event_output(0, call="r1"))
    await asyncio.sleep(0)  # batch [0] is in flight
    publisher.publish(event_output(1, call="r1"))  # buffered behind it
    waiting = asyncio.ensure_future(publisher.flush())
    await asyncio.sleep(0)
    publisher.hold()
    await asyncio.wait_for(waiting, 3)
    assert await _written(fake_redis, keys) == [0, 1]


async def test_no_hold_while_a_checkpoint_waits_to_be_sent(fake_redis: Any, keys: Keys) -> None:
    """A checkpoint queued to ride with the next outputs (`save_later`) is not held: a
    crash during the memory save that follows must find it."""
    publisher = await _started(fake_redis, keys)
    publisher.publish(event_output(0, call="r1"))
    publisher.save_checkpoint(b'{"after": "start"}')
    publisher.hold()
    publisher.publish(event_output(1, call="r1"))
    await _settle()
    assert await _written(fake_redis, keys) == [0, 1]
    saved = await fake_redis.hget(keys.checkpoint("s1", "r1"), "state")
    assert saved in (b'{"after": "start"}', '{"after": "start"}')
