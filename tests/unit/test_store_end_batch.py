"""A turn's last batch of outputs rides in its end's script (`EventPublisher.take_last`,
`end_run(batch=...)`): the batch is fenced, marked and numbered exactly as a batch the
publisher sends itself, and its entries come before the terminal status entry.

The same tests run against the real Redis in tests/integration/test_end_batch.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.errors import StaleAttempt, StoreUnavailable
from orchestrator.events import ResponseYield
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunStatus
from orchestrator.settings import Settings
from orchestrator.store.lifecycle import end_run
from orchestrator.store.runs import LeaseTable, RunStore
from orchestrator.store.streams import EventPublisher, StreamReader
from tests.fixtures_redis import FlakyFakeRedis, event_output, payloads

pytestmark = pytest.mark.timeout(10)

_SETTINGS = Settings()


@pytest.fixture
def store_redis(fake_redis: Any) -> Any:
    """The Redis the tests write to (the real one in the integration module)."""
    return fake_redis


def _record(**kw: Any) -> RunRecord:
    kw.setdefault("agent", "pkg:agent")
    kw.setdefault("status", RunStatus.RUNNING)
    kw.setdefault("attempt", 1)
    return RunRecord(run_id="r1", session_id="s1", submitted_at=1000.0, **kw)


def _publisher(redis: Any, keys: Keys, attempt: int = 1) -> EventPublisher:
    return EventPublisher(redis, keys, session_id="s1", run_id="r1", attempt=attempt)


async def _end(redis: Any, keys: Keys, publisher: EventPublisher, **kw: Any) -> Any:
    batch = await publisher.take_last()
    return batch, await end_run(
        redis,
        keys,
        _SETTINGS,
        run_id="r1",
        session_id="s1",
        status=RunStatus.COMPLETED,
        attempt=kw.pop("attempt", 1),
        release=True,
        drop_checkpoint=True,
        batch=batch,
        **kw,
    )


async def _kinds(redis: Any, keys: Keys) -> list[str]:
    entries = await StreamReader(redis, keys).read("s1")
    return [e.status.status.value if e.status is not None else e.kind for e in entries]


async def _started(redis: Any, keys: Keys, attempt: int = 1) -> EventPublisher:
    """Run r1 started by `attempt`, whose publisher has taken over its writes."""
    await RunStore(redis, keys).create(_record(attempt=attempt))
    assert await LeaseTable(redis, keys).renew("r1", attempt=attempt, worker_id="w", ttl_s=60)
    publisher = _publisher(redis, keys, attempt)
    await publisher.take_over()
    return publisher


async def test_the_last_batch_is_written_by_the_end_before_the_terminal_entry(
    store_redis: Any, keys: Keys
) -> None:
    publisher = await _started(store_redis, keys)
    publisher.publish(event_output(0, call="r1"))
    await publisher.flush()
    publisher.publish(event_output(1, call="r1"))
    publisher.publish(event_output(2, call="r1"))
    publisher.publish(ResponseYield(response="done"))
    publisher.save_checkpoint(b'{"at": "end"}')
    batch, ended = await _end(store_redis, keys, publisher)
    assert batch is not None
    assert batch.is_delivered
    assert ended is not None
    assert ended.status is RunStatus.COMPLETED
    assert await _kinds(store_redis, keys) == ["event", "event", "event", "response", "completed"]
    entries = await StreamReader(store_redis, keys).read("s1")
    assert payloads(entries) == [0, 1, 2]
    # The batch's event_seqs and marker, as the publisher's own script writes them.
    assert await publisher.last_seq("r1") == 2
    assert await store_redis.hget(keys.seqs("s1"), "r1") in (b"2", "2")
    marker = await store_redis.hget(keys.seqs("s1"), f"batch:{publisher.publisher_id}")
    assert int(marker) == 2
    # Its checkpoint was saved and dropped with the end (the fence kept).
    saved = await store_redis.hgetall(keys.checkpoint("s1", "r1"))
    assert {k.decode() if isinstance(k, bytes) else k for k in saved} == {"attempt"}
    assert publisher.stats.batches == 2
    assert publisher.stats.delivered == 4
    assert publisher.pending == 0


async def test_an_end_whose_batch_a_newer_attempt_fenced_off_writes_nothing(
    store_redis: Any, keys: Keys
) -> None:
    publisher = await _started(store_redis, keys)
    publisher.publish(event_output(0, call="r1"))
    publisher.publish(ResponseYield(response="late"))
    newer = _publisher(store_redis, keys, attempt=2)
    await newer.take_over()
    before = await store_redis.get(keys.run("r1"))
    with pytest.raises(StaleAttempt):
        await _end(store_redis, keys, publisher)
    assert await _kinds(store_redis, keys) == []
    assert await store_redis.get(keys.run("r1")) == before
    assert (await RunStore(store_redis, keys).get("r1")).status is RunStatus.RUNNING
    owner = await LeaseTable(store_redis, keys).owner("r1")
    assert owner is not None
    assert owner["state"] == "held"


async def test_a_repeated_end_writes_its_batch_once(keys: Keys) -> None:
    """The end's reply is lost (it ran): the same end again writes neither the batch nor
    the terminal entry twice."""
    flaky = FlakyFakeRedis()
    publisher = await _started(flaky, keys)
    publisher.publish(event_output(0, call="r1"))
    publisher.publish(ResponseYield(response="once"))
    batch = await publisher.take_last()
    assert batch is not None

    async def end() -> Any:
        return await end_run(
            flaky,
            keys,
            _SETTINGS,
            run_id="r1",
            session_id="s1",
            status=RunStatus.COMPLETED,
            attempt=1,
            release=True,
            drop_checkpoint=True,
            batch=batch,
        )

    flaky.lose_replies = 1
    with pytest.raises(StoreUnavailable):
        await end()
    assert not batch.is_delivered
    assert await end() is not None
    assert batch.is_delivered
    assert await _kinds(flaky, keys) == ["event", "response", "completed"]
    await flaky.aclose()


async def test_an_end_of_a_run_that_ended_already_still_writes_the_batch(
    store_redis: Any, keys: Keys
) -> None:
    """As when the publisher flushed before the end: the batch is written even though
    the end is refused (the run was ended meanwhile, e.g. aborted while queued)."""
    publisher = await _started(store_redis, keys)
    await RunStore(store_redis, keys).update("r1", status=RunStatus.ABORTED)
    publisher.publish(event_output(0, call="r1"))
    batch, ended = await _end(store_redis, keys, publisher)
    assert ended is None
    assert batch is not None
    assert batch.is_delivered
    assert await _kinds(store_redis, keys) == ["event"]


async def test_an_end_that_conflicts_with_another_write_writes_the_batch_once(
    store_redis: Any, keys: Keys
) -> None:
    """The end's first guess of the record is stale (someone wrote it meanwhile): the
    batch goes with the first try, the retried end without it."""
    publisher = await _started(store_redis, keys)
    # Another process changes the record behind this one's back.
    changed = (await RunStore(store_redis, keys).get("r1")).model_copy(update={"segment": 0})
    await store_redis.set(keys.run("r1"), changed.model_dump_json(exclude={"usage"}) + " ")
    publisher.publish(event_output(0, call="r1"))
    publisher.publish(ResponseYield(response="ok"))
    _, ended = await _end(store_redis, keys, publisher)
    assert ended is not None
    assert ended.status is RunStatus.COMPLETED
    assert await _kinds(store_redis, keys) == ["event", "response", "completed"]


async def test_take_last_waits_for_the_batch_in_flight_and_takes_the_rest(
    store_redis: Any, keys: Keys
) -> None:
    publisher = await _started(store_redis, keys)
    publisher.publish(event_output(0, call="r1"))
    await asyncio.sleep(0)  # the first batch is on its way
    publisher.publish(event_output(1, call="r1"))
    batch = await publisher.take_last()
    assert batch is not None
    assert payloads(await StreamReader(store_redis, keys).read("s1")) == [0]
    with pytest.raises(Exception, match="closed"):
        publisher.publish(event_output(2, call="r1"))
    await batch.send()
    assert payloads(await StreamReader(store_redis, keys).read("s1")) == [0, 1]
    # Nothing left: no batch.
    idle = _publisher(store_redis, keys)
    assert await idle.take_last() is None


async def test_an_end_without_a_batch_is_unchanged(store_redis: Any, keys: Keys) -> None:
    publisher = await _started(store_redis, keys)
    publisher.publish(event_output(0, call="r1"))
    await publisher.flush()
    batch, ended = await _end(store_redis, keys, publisher)
    assert batch is None
    assert ended is not None
    assert await _kinds(store_redis, keys) == ["event", "completed"]


async def test_an_end_whose_checkpoint_a_newer_attempt_saved_writes_nothing(
    store_redis: Any, keys: Keys
) -> None:
    """Without the attempt's fence (expired), the batch's checkpoint is checked against
    the saved one's attempt, as in a batch the publisher sends itself."""
    publisher = await _started(store_redis, keys)
    await store_redis.delete(keys.run_fence("s1", "r1"))
    await store_redis.hset(keys.checkpoint("s1", "r1"), mapping={"attempt": "2", "state": "{}"})
    publisher.publish(event_output(0, call="r1"))
    publisher.save_checkpoint(b'{"at": "end"}')
    with pytest.raises(StaleAttempt):
        await _end(store_redis, keys, publisher)
    assert await _kinds(store_redis, keys) == []
    assert (await RunStore(store_redis, keys).get("r1")).status is RunStatus.RUNNING


async def test_the_end_marks_its_batch_and_its_terminal_entry(store_redis: Any, keys: Keys) -> None:
    publisher = await _started(store_redis, keys)
    publisher.publish(event_output(0, call="r1"))
    await _end(store_redis, keys, publisher)
    seqs = await store_redis.hgetall(keys.seqs("s1"))
    fields = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in seqs.items()}
    assert fields == {"r1": 0, f"batch:{publisher.publisher_id}": 1, "batch:end:r1": 1}


async def test_the_end_keeps_the_checkpoints_attempt_whoever_saved_it(
    store_redis: Any, keys: Keys
) -> None:
    """The end drops the checkpoint's state and keeps its attempt (the checkpoint's fence):
    written by the last batch, or by an earlier one of the same attempt."""
    publisher = await _started(store_redis, keys)
    publisher.save_checkpoint(b'{"at": "start"}')
    await publisher.flush()
    publisher.publish(event_output(0, call="r1"))
    publisher.save_checkpoint(b'{"at": "end"}')
    await _end(store_redis, keys, publisher)
    saved = await store_redis.hgetall(keys.checkpoint("s1", "r1"))
    assert {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in saved.items()} == {
        "attempt": 1
    }
