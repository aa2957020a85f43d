"""The lean hot path's guarantees: checkpoints ride with their events and stay fenced,
run ends and aborts are pushed (not only polled)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.errors import StaleAttempt
from orchestrator.keys import Keys
from orchestrator.signals import AbortSignal
from orchestrator.store.abort import AbortFlags, AbortWatcher
from orchestrator.store.ends import EndWatcher
from orchestrator.store.streams import EventPublisher, StreamReader
from tests.fixtures_redis import event_output, payloads

pytestmark = pytest.mark.timeout(20)


def _publisher(redis: Any, keys: Keys, attempt: int) -> EventPublisher:
    return EventPublisher(redis, keys, session_id="s1", run_id="r1", attempt=attempt)


async def test_a_checkpoint_is_written_with_the_events_before_it(
    fake_redis: Any, keys: Keys
) -> None:
    publisher = _publisher(fake_redis, keys, attempt=1)
    await publisher.take_over()
    for i in range(3):
        publisher.publish(event_output(i, call="r1"))
    publisher.save_checkpoint(b'{"step": 3}')
    await publisher.flush()
    stored = await fake_redis.hgetall(keys.checkpoint("s1", "r1"))
    assert stored == {b"attempt": b"1", b"state": b'{"step": 3}'}
    entries = await StreamReader(fake_redis, keys).read("s1")
    assert payloads(entries) == [0, 1, 2]
    assert publisher.stats.delivered == 3  # the checkpoint is not a stream entry
    await publisher.close(expire=False)


async def test_a_replaced_attempt_can_neither_publish_nor_checkpoint(
    fake_redis: Any, keys: Keys
) -> None:
    old = _publisher(fake_redis, keys, attempt=1)
    await old.take_over()
    old.save_checkpoint(b'{"by": 1}')
    await old.flush()
    new = _publisher(fake_redis, keys, attempt=2)
    await new.take_over()
    old.publish(event_output(0, call="r1"))
    old.save_checkpoint(b'{"by": "zombie"}')
    with pytest.raises(StaleAttempt):
        await old.flush()
    stored = await fake_redis.hget(keys.checkpoint("s1", "r1"), "state")
    assert stored == b'{"by": 1}'
    assert await StreamReader(fake_redis, keys).read("s1") == []
    old.abandon()


async def test_a_run_end_wakes_its_waiter_without_waiting_for_the_poll(
    fake_redis: Any, keys: Keys
) -> None:
    watcher = EndWatcher(fake_redis, keys, poll_s=30.0)  # the fallback poll never fires
    ended = {"r1": False, "r2": False}

    async def is_ended(run_id: str) -> bool:
        return ended[run_id]

    first = asyncio.create_task(watcher.wait("r1", lambda: is_ended("r1")))
    second = asyncio.create_task(watcher.wait("r2", lambda: is_ended("r2")))
    await asyncio.sleep(0.1)
    ended["r1"] = True
    await fake_redis.publish(keys.run_ends(), "r1")
    await asyncio.wait_for(first, 5)
    assert not second.done()  # another run's end wakes nobody else
    second.cancel()
    await watcher.close()


async def test_an_abort_is_pushed_to_the_watcher_before_its_next_poll(
    fake_redis: Any, keys: Keys
) -> None:
    watcher = AbortWatcher(fake_redis, keys, interval_s=30.0)  # one poll, then a long wait
    await watcher.start()
    signal = AbortSignal()
    watcher.watch("s1", signal, "root-1")
    await asyncio.sleep(0.2)  # subscribed, and the first poll found nothing
    assert not signal.is_aborted
    await AbortFlags(fake_redis, keys).request_run("s1", "root-1", "stop now")
    await asyncio.wait_for(signal.wait(), 5)
    assert signal.reason == "stop now"
    assert watcher.pushes >= 1
    await watcher.stop()
