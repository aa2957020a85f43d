"""What a fenced publisher leaves in Redis: the owner of the run's writes after a refused
take-over, the TTLs of the keys it writes, and a checkpoint key it makes persistent."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import StaleAttempt
from orchestrator.keys import Keys
from orchestrator.store.streams import EventPublisher, StreamReader, StreamTtls
from tests.fixtures_redis import event_output

pytestmark = pytest.mark.timeout(10)


def _publisher(redis: Any, keys: Keys, attempt: int) -> EventPublisher:
    return EventPublisher(redis, keys, session_id="s1", run_id="r1", attempt=attempt)


async def test_a_refused_take_over_leaves_the_newer_attempt_in_charge(
    fake_redis: Any, keys: Keys
) -> None:
    old, new = _publisher(fake_redis, keys, 1), _publisher(fake_redis, keys, 2)
    await old.take_over()
    await new.take_over()
    with pytest.raises(StaleAttempt):
        await old.take_over()
    fence = keys.run_fence("s1", "r1")
    assert await fake_redis.get(fence) == b"2"
    assert await fake_redis.ttl(fence) > 0
    old.publish(event_output(0, call="r1"))
    with pytest.raises(StaleAttempt):
        await old.flush()
    new.publish(event_output(0, call="r1"))
    await new.flush()
    entries = await StreamReader(fake_redis, keys).read("s1")
    assert [e.output.origin.event_seq for e in entries if e.output and e.output.origin] == [0]
    old.abandon()
    await new.close(expire=False)


async def test_every_key_of_a_fenced_batch_has_a_ttl(fake_redis: Any, keys: Keys) -> None:
    publisher = _publisher(fake_redis, keys, 1)
    await publisher.take_over()
    for i in range(3):
        publisher.publish(event_output(i, call="r1"))
        await publisher.flush()  # a batch each: only the first sets the TTLs
    for key in (keys.events("s1"), keys.seqs("s1"), keys.run_fence("s1", "r1")):
        assert await fake_redis.ttl(key) > 0, key
    await publisher.close(expire=False)


async def test_a_checkpoint_clears_a_ttl_the_checkpoint_key_had(
    fake_redis: Any, keys: Keys
) -> None:
    checkpoint = keys.checkpoint("s1", "r1")
    await fake_redis.hset(checkpoint, mapping={"attempt": "1", "state": b"{}"})
    await fake_redis.expire(checkpoint, 60)
    publisher = _publisher(fake_redis, keys, 2)
    await publisher.take_over()
    publisher.save_checkpoint(b'{"step": 1}')
    await publisher.flush()
    publisher.publish(event_output(0, call="r1"))
    publisher.save_checkpoint(b'{"step": 2}')
    await publisher.flush()
    assert await fake_redis.ttl(checkpoint) == -1  # lives as long as the run
    assert await fake_redis.hget(checkpoint, "state") == b'{"step": 2}'
    await publisher.close(expire=False)


async def test_without_the_fence_a_newer_checkpoint_still_refuses_an_older_attempt(
    fake_redis: Any, keys: Keys
) -> None:
    old, new = _publisher(fake_redis, keys, 1), _publisher(fake_redis, keys, 2)
    await old.take_over()
    await new.take_over()
    new.save_checkpoint(b'{"by": 2}')
    await new.flush()
    await fake_redis.delete(keys.run_fence("s1", "r1"))  # lost (evicted, say)
    old.save_checkpoint(b'{"by": "zombie"}')
    with pytest.raises(StaleAttempt):
        await old.flush()
    assert await fake_redis.hget(keys.checkpoint("s1", "r1"), "state") == b'{"by": 2}'
    old.abandon()
    await new.close(expire=False)


async def test_an_older_attempt_cannot_retake_a_lost_fence_past_a_newer_checkpoint(
    fake_redis: Any, keys: Keys
) -> None:
    old, new = _publisher(fake_redis, keys, 1), _publisher(fake_redis, keys, 2)
    await old.take_over()
    await new.take_over()
    new.save_checkpoint(b'{"by": 2}')
    await new.flush()
    fence = keys.run_fence("s1", "r1")
    await fake_redis.delete(fence)  # lost (evicted, say)
    with pytest.raises(StaleAttempt):
        await old.take_over()
    assert await fake_redis.exists(fence) == 0  # the refused take-over left no fence
    old.save_checkpoint(b'{"by": "zombie"}')
    with pytest.raises(StaleAttempt):
        await old.flush()
    assert await fake_redis.hget(keys.checkpoint("s1", "r1"), "state") == b'{"by": 2}'
    old.abandon()
    await new.close(expire=False)


async def test_publishers_sharing_stream_ttls_push_a_sessions_ttls_back_once(
    fake_redis: Any, keys: Keys
) -> None:
    """The forks of a fan-out on one worker publish to one session stream: the first
    pushes its idle TTLs back, the others (within the refresh period) need not."""
    shared = StreamTtls()

    def fork(n: int, ttls: StreamTtls | None) -> EventPublisher:
        return EventPublisher(
            fake_redis,
            keys,
            session_id="s1",
            run_id=f"r1.fork_{n}",
            idle_ttl_s=3600,
            stream_ttls=ttls,
        )

    first = fork(1, shared)
    first.publish(event_output(0, call="r1.fork_1"))
    await first.flush()
    stream, seqs = keys.events("s1"), keys.seqs("s1")
    assert await fake_redis.ttl(stream) > 60
    for key in (stream, seqs):
        await fake_redis.expire(key, 60)  # as a sibling's end cuts them to its retention
    second = fork(2, shared)
    second.publish(event_output(0, call="r1.fork_2"))
    await second.flush()
    assert 0 < await fake_redis.ttl(stream) <= 60
    assert 0 < await fake_redis.ttl(seqs) <= 60
    alone = fork(3, None)  # its own clock: its first batch pushes them back
    alone.publish(event_output(0, call="r1.fork_3"))
    await alone.flush()
    assert await fake_redis.ttl(stream) > 60
    assert await fake_redis.ttl(seqs) > 60
    for publisher in (first, second, alone):
        await publisher.close(expire=False)
