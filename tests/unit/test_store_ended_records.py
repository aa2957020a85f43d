"""`Run.result()` told the ended record by the end's announcement: no read of the record
after the end is heard, unless the announcement carries no record (an old worker's, or a
large record) or one that is not this run's ended record (untrusted: then it reads)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from orchestrator.client import Client
from orchestrator.keys import Keys
from orchestrator.runs import ForkInfo, RunRecord, RunStatus
from orchestrator.settings import Settings
from orchestrator.store.ends import BatchedReads
from orchestrator.store.runs import EndWrites, RunStore, Started

pytestmark = pytest.mark.timeout(20)


class _CountedReads(BatchedReads):
    """The client's record reads, counted."""

    def __init__(self, redis: Any) -> None:
        super().__init__(redis)
        self.reads = 0

    async def get(self, key: str) -> Any:
        self.reads += 1
        return await super().get(key)


@pytest.fixture
async def client(fake_redis: Any, keys: Keys) -> AsyncIterator[Client]:
    made = Client(fake_redis, Settings(key_prefix=keys.prefix))
    made.record_reads = _CountedReads(fake_redis)
    try:
        yield made
    finally:
        await made.ends.close()


def _reads(client: Client) -> int:
    reads = client.record_reads
    assert isinstance(reads, _CountedReads)
    return reads.reads


async def _running(runs: RunStore, run_id: str = "r1") -> RunRecord:
    await runs.create(RunRecord(run_id=run_id, session_id="s1", agent="pkg:a", submitted_at=1.0))
    start = await runs.start(
        run_id,
        session_id="s1",
        root_run_id=run_id,
        attempt=1,
        worker_id="w1",
        lease_ttl_s=60,
        check=lambda record: record.attempt == 1,
    )
    assert start.outcome is Started.STARTED
    return start.record


async def _waiting(client: Client, run_id: str = "r1") -> asyncio.Task[Any]:
    """`result()` started, its first read done and nothing heard yet."""
    task = asyncio.create_task(client.run(run_id, "s1").result(timeout=15))
    await asyncio.sleep(0.2)
    assert not task.done()
    assert _reads(client) == 1
    return task


async def _end(runs: RunStore, response: str, run_id: str = "r1") -> None:
    ended = await runs.end(
        run_id,
        status=RunStatus.COMPLETED,
        from_status={RunStatus.RUNNING},
        writes=EndWrites(session_id="s1", run_ttl_s=600, stream_ttl_s=300),
        response=response,
    )
    assert ended is not None


async def test_a_result_returns_the_ended_run_without_reading_its_record_again(
    client: Client, fake_redis: Any, keys: Keys
) -> None:
    """The end's announcement carries the record: the waiter's one read is its first."""
    runs = RunStore(fake_redis, keys)
    await _running(runs)
    waiting = await _waiting(client)
    await _end(runs, "done")
    result = await asyncio.wait_for(waiting, 5)
    assert result.status is RunStatus.COMPLETED
    assert result.response == "done"
    assert _reads(client) == 1


async def test_a_large_record_is_announced_by_id_and_read(
    client: Client, fake_redis: Any, keys: Keys
) -> None:
    """Over 16 KiB the announcement is the id alone, as before: one more read."""
    runs = RunStore(fake_redis, keys)
    await _running(runs)
    waiting = await _waiting(client)
    await _end(runs, "x" * 20_000)
    result = await asyncio.wait_for(waiting, 5)
    assert result.response == "x" * 20_000
    assert _reads(client) == 2


@pytest.mark.parametrize("carried", ["{not json", "another run's", "running"])
async def test_a_forged_announcement_wakes_a_read_not_a_result(
    client: Client, fake_redis: Any, keys: Keys, carried: str
) -> None:
    """An announcement is untrusted: a record that does not decode, is another run's or
    is not ended is not taken; the waiter reads the record and goes on waiting while it
    is not ended, then returns what Redis holds."""
    runs = RunStore(fake_redis, keys)
    record = await _running(runs)
    other = await _running(runs, "r2")
    waiting = await _waiting(client)
    payload = {
        "{not json": "{not json",
        "another run's": other.updated({"status": RunStatus.COMPLETED}).model_dump_json(),
        "running": record.model_dump_json(),
    }[carried]
    await fake_redis.publish(keys.run_ended_records(), f"r1\n{payload}")
    await asyncio.sleep(0.2)
    assert not waiting.done()  # not taken: read, and the stored record is running
    assert _reads(client) == 2
    await _end(runs, "the stored one")
    result = await asyncio.wait_for(waiting, 5)
    assert result.status is RunStatus.COMPLETED
    assert result.response == "the stored one"


async def test_an_old_workers_announcement_of_the_id_alone_still_wakes_the_result(
    client: Client, fake_redis: Any, keys: Keys
) -> None:
    """An older worker's end publishes only the id on the run-ends channel: read as before."""
    runs = RunStore(fake_redis, keys)
    record = await _running(runs)
    waiting = await _waiting(client)
    ended = record.updated({"status": RunStatus.COMPLETED, "response": "old"})
    await fake_redis.set(keys.run("r1"), ended.model_dump_json())
    await fake_redis.publish(keys.run_ends(), "r1")
    result = await asyncio.wait_for(waiting, 5)
    assert result.response == "old"


async def test_an_end_announces_the_id_on_the_run_ends_channel_as_before(
    fake_redis: Any, keys: Keys
) -> None:
    """Older clients listen to the run-ends channel only: each end still names the run
    there, after the record on the records' channel."""
    runs = RunStore(fake_redis, keys)
    await _running(runs)
    async with fake_redis.pubsub() as pubsub:
        await pubsub.subscribe(keys.run_ended_records(), keys.run_ends())
        for _ in range(2):
            await pubsub.get_message(timeout=1)
        await _end(runs, "done")
        first = await pubsub.get_message(timeout=1)
        second = await pubsub.get_message(timeout=1)
    assert first is not None
    assert second is not None
    assert first["channel"] == keys.run_ended_records().encode()
    run_id, _, raw = first["data"].decode().partition("\n")
    assert run_id == "r1"
    assert RunRecord.of_json("r1", raw).response == "done"
    assert second["channel"] == keys.run_ends().encode()
    assert second["data"] == b"r1"


async def test_a_forks_end_announces_its_id_only(fake_redis: Any, keys: Keys) -> None:
    """A fork's end names it on the run-ends channel and sends no record: a client rarely
    waits on a fork (its parent's gather does), and a fan-out's records would go to every
    subscribed client. A `result()` of a fork reads the record, as before."""
    runs = RunStore(fake_redis, keys)
    fork = ForkInfo(fork_id="fork_1", root_run_id="r1", parent_run_id="r1", depth=1, fork_seq=1)
    record = RunRecord(
        run_id="r1.fork_1", session_id="s1", agent="pkg:a", submitted_at=1.0, fork=fork
    )
    await runs.create(record)
    started = await runs.start(
        "r1.fork_1",
        session_id="s1",
        root_run_id="r1",
        attempt=1,
        worker_id="w1",
        lease_ttl_s=60,
        check=lambda r: r.attempt == 1,
    )
    assert started.outcome is Started.STARTED
    async with fake_redis.pubsub() as pubsub:
        await pubsub.subscribe(keys.run_ended_records(), keys.run_ends())
        for _ in range(2):
            await pubsub.get_message(timeout=1)
        await runs.end(
            "r1.fork_1",
            status=RunStatus.COMPLETED,
            from_status=[RunStatus.RUNNING],
            writes=EndWrites(session_id="s1", run_ttl_s=600, stream_ttl_s=300),
            response="done",
        )
        first = await pubsub.get_message(timeout=1)
        second = await pubsub.get_message(timeout=0.2)
    assert first is not None
    assert first["channel"] == keys.run_ends().encode()
    assert first["data"] == b"r1.fork_1"
    assert second is None
