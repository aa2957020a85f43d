"""The edges of a run's end that carries its publisher's last batch (fakeredis here; the
real Redis in tests/integration/test_end_batch_edges.py): a first checkpoint written by
the end still expires; a run someone else ended keeps its terminal entry last; a batch
the flusher gave up on is tried again by `take_last`; a malformed end reply is a
`StoreError`, not a bare TypeError."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from redis import exceptions as redis_errors

import orchestrator.store.runs as runs_mod
from orchestrator.errors import OrchestratorError, StoreUnavailable
from orchestrator.events import ResponseYield
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunStatus
from orchestrator.settings import Settings
from orchestrator.store.lifecycle import end_run
from orchestrator.store.runs import RunStore
from orchestrator.store.streams import EventPublisher, StreamReader
from tests.fixtures_redis import event_output, payloads
from tests.unit.test_store_end_batch import _started

_SETTINGS = Settings()


@pytest.fixture
def store_redis(fake_redis: Any) -> Any:
    """The Redis the tests write to (the real one in the integration module)."""
    return fake_redis


async def _end(redis: Any, keys: Keys, batch: Any) -> Any:
    return await end_run(
        redis,
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


async def test_a_first_checkpoint_written_by_the_end_still_expires(
    store_redis: Any, keys: Keys
) -> None:
    publisher = await _started(store_redis, keys)
    publisher.publish(event_output(0, call="r1"))
    publisher.save_checkpoint(b'{"at": "start"}')  # the turn's only checkpoint
    publisher.publish(ResponseYield(response="done"))
    batch = await publisher.take_last()
    assert batch is not None
    assert await _end(store_redis, keys, batch) is not None
    key = keys.checkpoint("s1", "r1")
    assert await store_redis.exists(key)
    # Every key has a TTL: the checkpoint's fence must expire with the run.
    assert await store_redis.ttl(key) > 0, "checkpoint key written by the end has no TTL"


async def test_a_checkpoint_flushed_before_the_end_expires(store_redis: Any, keys: Keys) -> None:
    """The same turn with its checkpoint flushed before the end."""
    publisher = await _started(store_redis, keys)
    publisher.publish(event_output(0, call="r1"))
    publisher.save_checkpoint(b'{"at": "start"}')
    publisher.publish(ResponseYield(response="done"))
    await publisher.flush()
    assert await _end(store_redis, keys, None) is not None
    assert await store_redis.ttl(keys.checkpoint("s1", "r1")) > 0


@pytest.mark.parametrize("reaper", ["other_process", "same_process"])
async def test_a_run_ended_elsewhere_keeps_its_terminal_entry_last(
    store_redis: Any, keys: Keys, reaper: str
) -> None:
    """The reaper ended the run (its terminal entry written) while its lease-lost worker
    went on; the worker's end with its last batch writes no entry after the terminal
    one. other_process: the worker's end still guesses the running record (its script
    finds it changed); same_process: the end reads the terminal record first."""
    publisher = await _started(store_redis, keys)
    running_raw = await store_redis.get(keys.run("r1"))
    running = RunRecord.model_validate_json(running_raw)
    publisher.publish(event_output(0, call="r1"))
    await publisher.flush()
    # The reaper gives up on the run (workers/reaper.py _give_up): terminal entry written.
    reaped = await end_run(
        store_redis,
        keys,
        _SETTINGS,
        run_id="r1",
        session_id="s1",
        status=RunStatus.ERROR,
        error="worker lost",
        error_type="WorkerLost",
    )
    assert reaped is not None
    if reaper == "other_process":  # this process still guesses the running record
        runs_mod._LAST_WRITTEN["r1"] = (running_raw, running)
    # The worker (lease lost, not yet noticed) finishes its turn and ends the run.
    publisher.publish(event_output(1, call="r1"))
    publisher.publish(ResponseYield(response="late"))
    publisher.save_checkpoint(b'{"at": "end"}')
    batch = await publisher.take_last()
    ended = await end_run(
        store_redis,
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
    assert ended is None
    entries = await StreamReader(store_redis, keys).read("s1")
    kinds = [e.status.status.value if e.status is not None else e.kind for e in entries]
    # The run's terminal entry must stay its last entry.
    assert kinds[-1] == "error", f"entries after the terminal entry: {kinds}"


class FailingFakeRedis(fakeredis.FakeAsyncRedis):
    """The next `fail` round trips fail before reaching Redis."""

    fail = 0

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        run = pipe.execute
        client = self

        async def execute(raise_on_error: bool = True) -> Any:
            if client.fail > 0:
                client.fail -= 1
                raise redis_errors.ConnectionError("connection refused")
            return await run(raise_on_error)

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe


async def _given_up(redis: Any, keys: Keys) -> EventPublisher:
    publisher = EventPublisher(
        redis, keys, session_id="s1", run_id="r1", attempt=1, retry_delays_s=()
    )
    await publisher.take_over()
    redis.fail = 1  # the blip: one send fails, the flusher (no retries) gives up
    publisher.publish(event_output(0, call="r1"))
    with pytest.raises(StoreUnavailable):
        await publisher.flush()
    assert redis.fail == 0  # Redis is back
    return publisher


async def test_flush_retries_a_batch_the_flusher_gave_up_on(keys: Keys) -> None:
    """`flush()` delivers a batch it gave up on once Redis is back."""
    redis = FailingFakeRedis(server=fakeredis.FakeServer())
    publisher = await _given_up(redis, keys)
    await publisher.flush()
    assert payloads(await StreamReader(redis, keys).read("s1")) == [0]
    await redis.aclose()


async def test_take_last_retries_a_batch_the_flusher_gave_up_on(keys: Keys) -> None:
    redis = FailingFakeRedis(server=fakeredis.FakeServer())
    publisher = await _given_up(redis, keys)
    try:
        await publisher.take_last()  # tries the given-up batch again
    finally:
        entries = payloads(await StreamReader(redis, keys).read("s1"))
        await redis.aclose()
    assert entries == [0]


@pytest.mark.parametrize("reply", [None, [], [b"-1"]])
async def test_a_malformed_end_reply_is_an_orchestrator_error(
    fake_redis: Any, keys: Keys, monkeypatch: pytest.MonkeyPatch, reply: Any
) -> None:
    record = RunRecord(
        run_id="r1",
        session_id="s1",
        submitted_at=1000.0,
        agent="pkg:agent",
        status=RunStatus.RUNNING,
        attempt=1,
    )
    await RunStore(fake_redis, keys).create(record)
    publisher = EventPublisher(fake_redis, keys, session_id="s1", run_id="r1", attempt=1)
    await publisher.take_over()
    publisher.publish(ResponseYield(response="x"))
    batch = await publisher.take_last()

    async def bad(*_: Any) -> Any:
        return reply

    monkeypatch.setattr(runs_mod, "run_script", bad)
    with pytest.raises(OrchestratorError):
        await end_run(
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
    assert batch is not None
    assert not batch.is_delivered
