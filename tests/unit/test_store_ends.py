"""Waiting for runs' ends (`store.ends`): pushed over the client's one subscription, with
a record read only when an end is heard or the subscription may have missed one, and the
reads of many waiters sent together."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis import exceptions as redis_errors

from orchestrator.keys import Keys
from orchestrator.store.ends import BatchedReads, EndWatcher

pytestmark = pytest.mark.timeout(20)


class _Checks:
    """`ended()` for one run: counts the reads, ends when told."""

    def __init__(self) -> None:
        self.reads = 0
        self.ended = False

    async def __call__(self) -> bool:
        self.reads += 1
        return self.ended


async def test_a_waiter_does_not_read_the_record_every_poll_while_the_subscription_listens(
    fake_redis: Any, keys: Keys
) -> None:
    """With 1,000 runs waiting, a read each per second was 1,000 reads a second."""
    watcher = EndWatcher(fake_redis, keys, poll_s=0.2)
    check = _Checks()
    waiting = asyncio.create_task(watcher.wait("r1", check))
    await asyncio.sleep(1.0)  # five polls' worth
    assert check.reads == 1  # the first check only
    check.ended = True
    await fake_redis.publish(keys.run_ends(), "r1")
    await asyncio.wait_for(waiting, 5)
    assert check.reads == 2
    await watcher.close()


class _FlakyPubsub:
    """A subscription whose next read fails when its owner says so."""

    def __init__(self, inner: Any, owner: _FlakyRedis) -> None:
        self._inner = inner
        self._owner = owner

    async def subscribe(self, *channels: str) -> None:
        await self._inner.subscribe(*channels)

    async def get_message(self, timeout: float = 0.0) -> Any:
        if self._owner.fail_next:
            self._owner.fail_next = False
            raise redis_errors.ConnectionError("the subscription's connection dropped")
        return await self._inner.get_message(timeout=min(timeout, 0.05))

    async def aclose(self) -> None:
        await self._inner.aclose()


class _FlakyRedis:
    """fakeredis whose subscriptions drop their connection when told to."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.fail_next = False

    def pubsub(self, **options: Any) -> _FlakyPubsub:
        return _FlakyPubsub(self._inner.pubsub(**options), self)


async def test_a_waiter_rechecks_at_once_when_the_subscription_drops(
    fake_redis: Any, keys: Keys
) -> None:
    """An end published while the connection was down is never heard: every waiter
    reads its record again when the subscription fails (and when it listens again)."""
    flaky = _FlakyRedis(fake_redis)
    watcher = EndWatcher(flaky, keys, poll_s=30.0)  # no poll within the test
    check = _Checks()
    waiting = asyncio.create_task(watcher.wait("r1", check))
    await asyncio.sleep(0.2)
    check.ended = True  # its end was published while the connection was down
    flaky.fail_next = True
    await asyncio.wait_for(waiting, 5)
    await watcher.close()


class _CountingRedis:
    """fakeredis that counts its MGETs and GETs."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.mgets: list[list[str]] = []

    async def mget(self, keys: list[str]) -> list[Any]:
        self.mgets.append(list(keys))
        return list(await self._inner.mget(keys))


async def test_reads_asked_for_together_are_one_round_trip(fake_redis: Any) -> None:
    await fake_redis.mset({"a": b"1", "b": b"2"})
    counting = _CountingRedis(fake_redis)
    reads = BatchedReads(counting)  # type: ignore[arg-type]
    values = await asyncio.gather(*(reads.get(key) for key in ("a", "b", "a", "gone")))
    assert values == [b"1", b"2", b"1", None]
    assert counting.mgets == [["a", "b", "gone"]]
    assert await reads.get("b") == b"2"  # a later read is a round trip of its own
    assert len(counting.mgets) == 2


async def test_a_reader_that_gives_up_leaves_the_read_to_the_others(fake_redis: Any) -> None:
    await fake_redis.set("a", b"1")
    reads = BatchedReads(fake_redis)
    impatient = asyncio.create_task(reads.get("a"))
    patient = asyncio.create_task(reads.get("a"))
    await asyncio.sleep(0)
    impatient.cancel()
    assert await patient == b"1"
    with pytest.raises(asyncio.CancelledError):
        await impatient
