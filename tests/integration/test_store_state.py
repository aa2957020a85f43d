"""Abort, memory, checkpoints, runs and leases on the real Redis, with several clients
standing in for several processes racing each other."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix

from orchestrator.errors import StaleAttempt
from orchestrator.keys import Keys
from orchestrator.ports import MemoryLimits
from orchestrator.runs import RunRecord, RunRequest, RunStatus
from orchestrator.settings import Settings
from orchestrator.signals import AbortSignal
from orchestrator.store.abort import AbortFlags, AbortWatcher
from orchestrator.store.checkpoints import CheckpointStore
from orchestrator.store.connection import Redis, connect_arq
from orchestrator.store.memory import MemoryScope, RedisMemoryStore
from orchestrator.store.queue import JobQueue, job_id
from orchestrator.store.runs import LeaseTable, RunStore
from tests.contracts.memory_store_contract import MemoryStoreContract
from tests.integration.workerproc import drop_job_keys
from workers.reaper import Reaper

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

MakeRedis = Callable[..., Redis]


async def test_abort_watcher_fires_within_about_one_interval(
    redis: Redis, keys: Keys, make_redis: MakeRedis
) -> None:
    interval = 0.05
    watcher = AbortWatcher(redis, keys, interval_s=interval)
    signals = [AbortSignal() for _ in range(3)]
    for i, signal in enumerate(signals):
        watcher.watch(f"s{i}", signal)
    await watcher.start()
    await asyncio.sleep(0.12)
    started = time.perf_counter()
    await AbortFlags(make_redis(), keys).request("s1", "user stop")
    await asyncio.wait_for(signals[1].wait(), timeout=1)
    elapsed = time.perf_counter() - started
    await watcher.stop()
    assert signals[1].reason == "user stop"
    assert not signals[0].is_aborted
    assert not signals[2].is_aborted
    assert elapsed < interval * 3, elapsed


class TestRedisMemoryStoreContractOnRealRedis(MemoryStoreContract):
    """The shared MemoryStore contract, on the real Redis."""

    @pytest.fixture
    def store(self, redis: Redis, keys: Keys) -> RedisMemoryStore:
        return RedisMemoryStore(redis, keys)

    @pytest.fixture
    def make_store(self, redis: Redis, keys: Keys) -> Callable[[MemoryLimits], RedisMemoryStore]:
        scope = MemoryScope(tenant="t", session_id="s")
        return lambda limits: RedisMemoryStore(redis, keys, scope=scope, limits=limits)


async def test_two_writers_appending_to_one_memory_key_lose_nothing(
    keys: Keys, make_redis: MakeRedis
) -> None:
    first, second = (RedisMemoryStore(make_redis(), keys) for _ in range(2))

    async def append(store: RedisMemoryStore, who: str) -> list[str]:
        return [(await store.add_experience("shared", f"{who}-{i}")).id for i in range(40)]

    ids_a, ids_b = await asyncio.gather(append(first, "a"), append(second, "b"))
    all_ids = ids_a + ids_b
    assert len(set(all_ids)) == 80
    snapshot = await first.load("shared")
    assert sorted(e.text for e in snapshot.experiences) == sorted(
        [f"a-{i}" for i in range(40)] + [f"b-{i}" for i in range(40)]
    )
    assert [e.id for e in snapshot.experiences] == [f"exp_{n}" for n in range(1, 81)]


async def test_writers_of_different_memory_keys_do_not_interfere(
    keys: Keys, make_redis: MakeRedis
) -> None:
    first, second = (RedisMemoryStore(make_redis(), keys) for _ in range(2))

    async def work(store: RedisMemoryStore, key: str) -> None:
        for i in range(30):
            await store.add_experience(key, f"{key}-{i}")
            await store.save_messages(key, [{"role": "user", "content": f"{key}-{i}"}])

    await asyncio.gather(work(first, "alpha"), work(second, "beta"))
    for key in ("alpha", "beta"):
        snapshot = await first.load(key)
        assert [e.text for e in snapshot.experiences] == [f"{key}-{i}" for i in range(30)]
        assert snapshot.messages == [{"role": "user", "content": f"{key}-29"}]


async def test_the_same_experience_from_two_writers_lands_once(
    keys: Keys, make_redis: MakeRedis
) -> None:
    stores = [RedisMemoryStore(make_redis(), keys) for _ in range(4)]
    results = await asyncio.gather(*(s.add_experience("k", "same lesson") for s in stores))
    assert {e.id for e in results} == {"exp_1"}
    assert len((await stores[0].load("k")).experiences) == 1


async def test_a_replaced_attempt_cannot_overwrite_the_checkpoint(
    keys: Keys, make_redis: MakeRedis
) -> None:
    zombie, successor = (CheckpointStore(make_redis(), keys) for _ in range(2))
    await zombie.save("s1", "call", attempt=1, state=b'{"step": 3}')
    await successor.save("s1", "call", attempt=2, state=b'{"step": 3, "resumed": true}')
    with pytest.raises(StaleAttempt):
        await zombie.save("s1", "call", attempt=1, state=b'{"step": 4}')
    assert await zombie.load("s1", "call") == b'{"step": 3, "resumed": true}'


async def test_racing_checkpoint_saves_never_let_an_older_attempt_win(
    keys: Keys, make_redis: MakeRedis
) -> None:
    stores = [CheckpointStore(make_redis(), keys) for _ in range(2)]

    async def save_many(store: CheckpointStore, attempt: int) -> int:
        refused = 0
        for step in range(30):
            try:
                await store.save("s1", "call", attempt=attempt, state=f"{attempt}:{step}".encode())
            except StaleAttempt:
                refused += 1
        return refused

    await asyncio.gather(save_many(stores[0], 1), save_many(stores[1], 2))
    assert (await stores[0].load("s1", "call") or b"").startswith(b"2:")


async def test_of_two_concurrent_transitions_exactly_one_wins(
    keys: Keys, make_redis: MakeRedis
) -> None:
    first, second = (RunStore(make_redis(), keys) for _ in range(2))
    for n in range(20):
        run_id = f"run-{n}"
        await first.create(RunRecord(run_id=run_id, session_id="s1", agent="pkg:agent"))
        start = first.transition(
            run_id, from_status={RunStatus.QUEUED}, to=RunStatus.RUNNING, worker_id="w1"
        )
        abort = second.transition(
            run_id, from_status={RunStatus.QUEUED}, to=RunStatus.ABORTED, abort_reason="stop"
        )
        started, aborted = await asyncio.gather(start, abort)
        assert (started is None) != (aborted is None)
        final = await first.get(run_id)
        assert final.status == (RunStatus.RUNNING if started else RunStatus.ABORTED)
    counts = await first.counts_by_status()
    assert counts["running"] + counts["aborted"] == 20
    assert counts["queued"] == 0


async def test_of_two_reapers_exactly_one_claims_an_expired_lease(
    keys: Keys, make_redis: MakeRedis
) -> None:
    worker = LeaseTable(make_redis(), keys)
    reapers = [LeaseTable(make_redis(), keys) for _ in range(2)]
    for n in range(10):
        await worker.renew(f"run-{n}", attempt=1, worker_id="w1", ttl_s=0.01)
    await asyncio.sleep(0.02)
    expired = await reapers[0].expired()
    assert sorted(expired) == sorted(f"run-{n}" for n in range(10))
    for run_id in expired:
        claims = await asyncio.gather(*(r.claim_expired(run_id) for r in reapers))
        assert sorted(claims, key=str) == [1, None]
    assert await worker.renew("run-0", attempt=1, worker_id="w1", ttl_s=10) is False


async def test_a_waiting_runs_segment_picked_by_a_dead_worker_is_enqueued_again(
    redis_url: str, keys: Keys
) -> None:
    """The last fork resumed its parent (the next segment's job was queued), and a worker
    picked that job and died before starting it: the parent is still waiting, its segment
    job is in progress for arq's 24 h, and re-enqueueing it under the same job id is
    refused. Two sweeps lease_ttl_s apart discard that job and queue the segment again,
    on one reaper of several."""
    arq = connect_arq(redis_url, keys.queue())
    settings = Settings(redis_url=redis_url, key_prefix=keys.prefix, lease_ttl_s=0.2)
    request = RunRequest(run_id="parent", session_id="s1", agent="m:a", message="hi")
    jid = job_id("parent", 1, 1)
    try:
        queue = JobQueue(arq, keys)
        runs = RunStore(arq, keys)
        await runs.create(
            RunRecord(
                run_id="parent",
                session_id="s1",
                agent="m:a",
                status=RunStatus.WAITING,
                request=request.model_dump(mode="json"),
                waiting_for=[],
            )
        )
        await queue.enqueue(request.model_copy(update={"segment": 1}))
        await arq.psetex(in_progress_key_prefix + jid, 86_400_000, b"1")  # the dead pick
        reapers = [Reaper(arq, keys, settings, queue) for _ in range(2)]
        for reaper in reapers:
            assert await reaper.sweep_unstarted() == []  # seen once: its worker may be alive
        await asyncio.sleep(0.25)
        assert await reapers[0].sweep_unstarted() == ["parent"]
        assert not await arq.exists(in_progress_key_prefix + jid)
        assert await arq.exists(job_key_prefix + jid)
        assert await arq.zscore(keys.queue(), jid) is not None
        # A live worker picks the segment queued again; the other reaper, which saw the
        # dead pick too, must not discard this one.
        await arq.psetex(in_progress_key_prefix + jid, 86_400_000, b"1")
        assert await reapers[1].sweep_unstarted() == []
        assert await arq.exists(job_key_prefix + jid)
        assert (await runs.get("parent")).status is RunStatus.WAITING  # a worker resumes it
    finally:
        await drop_job_keys(arq, [jid])
        await arq.aclose()


async def test_creating_a_batch_of_records_creates_each_once_and_indexes_them(
    redis: Redis, keys: Keys
) -> None:
    """A spawn batch's records are written by one script per status and 256 records; a
    record that exists already is left as it is and reported as not created."""
    runs = RunStore(redis, keys)
    records = [
        RunRecord(
            run_id=f"r{i}",
            session_id="s1",
            agent="m:a",
            status=RunStatus.QUEUED if i % 3 else RunStatus.RUNNING,
            submitted_at=1000.0 + i,
        )
        for i in range(600)
    ]
    existing = records[5].model_copy(update={"agent": "m:earlier"})
    assert await runs.create(existing)
    created = await runs.create_many(records)
    assert created == [i != 5 for i in range(600)]
    assert (await runs.get("r5")).agent == "m:earlier"
    assert await redis.zcard(keys.runs_index()) == 600
    assert await redis.zscore(keys.runs_index(), "r599") == 1_000_000.0 + 599_000.0
    queued = await redis.zcard(keys.runs_by_status(RunStatus.QUEUED))
    assert queued == 400
    assert await redis.zcard(keys.runs_by_status(RunStatus.RUNNING)) == 200
    assert (await runs.get("r7")).status is RunStatus.QUEUED
    assert await runs.create_many(records[:3]) == [False, False, False]
