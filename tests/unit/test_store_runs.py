"""RunStore, LeaseTable and WorkerRegistry on fakeredis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.errors import PayloadError, RunNotFound
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunStatus
from orchestrator.store.runs import LeaseTable, RunStore, WorkerRegistry

pytestmark = pytest.mark.timeout(10)


def _record(run_id: str, *, at: float = 1000.0, **kw: Any) -> RunRecord:
    kw.setdefault("agent", "pkg:agent")
    return RunRecord(run_id=run_id, session_id="s1", submitted_at=at, **kw)


@pytest.fixture
def runs(fake_redis: Any, keys: Keys) -> RunStore:
    return RunStore(fake_redis, keys)


async def test_a_created_run_reads_back(runs: RunStore) -> None:
    record = _record("r1", tenant="acme")
    assert await runs.create(record) is True
    assert await runs.get("r1") == record


async def test_the_job_payload_is_kept_for_requeueing(runs: RunStore) -> None:
    payload = {"run_id": "r1", "session_id": "s1", "agent": "pkg:agent", "message": "hi"}
    await runs.create(_record("r1", request=payload))
    assert (await runs.get("r1")).request == payload


async def test_create_never_overwrites(runs: RunStore) -> None:
    await runs.create(_record("r1", agent="pkg:first"))
    assert await runs.create(_record("r1", agent="pkg:second")) is False
    assert (await runs.get("r1")).agent == "pkg:first"


async def test_a_missing_run_is_not_found(runs: RunStore) -> None:
    with pytest.raises(RunNotFound) as caught:
        await runs.get("nope")
    assert caught.value.run_id == "nope"
    with pytest.raises(RunNotFound):
        await runs.update("nope", worker_id="w")


async def test_a_corrupt_record_is_a_payload_error(
    runs: RunStore, fake_redis: Any, keys: Keys
) -> None:
    await fake_redis.set(keys.run("r1"), "{garbage")
    with pytest.raises(PayloadError, match="r1"):
        await runs.get("r1")


async def test_update_changes_only_the_given_fields(runs: RunStore) -> None:
    await runs.create(_record("r1"))
    updated = await runs.update("r1", worker_id="w1", usage={"tokens": 3})
    assert (updated.worker_id, updated.usage) == ("w1", {"tokens": 3})
    assert await runs.get("r1") == updated


async def test_update_refuses_unknown_or_invalid_fields(runs: RunStore) -> None:
    await runs.create(_record("r1"))
    with pytest.raises(ValueError, match="unknown"):
        await runs.update("r1", colour="red")
    with pytest.raises(ValueError, match="cannot be changed"):
        await runs.update("r1", v=2)
    with pytest.raises(ValidationError):
        await runs.update("r1", attempt="many")


async def test_transition_happens_only_from_an_allowed_status(runs: RunStore) -> None:
    await runs.create(_record("r1"))
    started = await runs.transition(
        "r1", from_status={RunStatus.QUEUED}, to=RunStatus.RUNNING, started_at=1001.0
    )
    assert started is not None
    assert started.status == RunStatus.RUNNING
    assert await runs.transition("r1", from_status={RunStatus.QUEUED}, to=RunStatus.RUNNING) is None
    done = await runs.transition("r1", from_status=RunStatus.RUNNING, to=RunStatus.COMPLETED)
    assert done is not None
    assert done.started_at == 1001.0
    # A finished run is never reopened.
    assert await runs.transition("r1", from_status={RunStatus.RUNNING}, to=RunStatus.ERROR) is None
    assert (await runs.get("r1")).status == RunStatus.COMPLETED


async def test_concurrent_transitions_have_exactly_one_winner(runs: RunStore) -> None:
    await runs.create(_record("r1"))
    results = await asyncio.gather(
        *(
            runs.transition(
                "r1", from_status={RunStatus.QUEUED}, to=RunStatus.RUNNING, worker_id=f"w{i}"
            )
            for i in range(10)
        )
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert (await runs.get("r1")).worker_id == winners[0].worker_id


async def test_list_is_newest_first_with_filters_and_paging(runs: RunStore) -> None:
    for i in range(6):
        await runs.create(
            _record(f"r{i}", at=1000.0 + i, agent=f"pkg:a{i % 2}", tenant="t" if i < 3 else None)
        )
    assert [r.run_id for r in await runs.list()] == ["r5", "r4", "r3", "r2", "r1", "r0"]
    assert [r.run_id for r in await runs.list(agent="pkg:a1")] == ["r5", "r3", "r1"]
    assert [r.run_id for r in await runs.list(tenant="t")] == ["r2", "r1", "r0"]
    assert [r.run_id for r in await runs.list(offset=1, limit=2)] == ["r4", "r3"]
    await runs.transition("r4", from_status={RunStatus.QUEUED}, to=RunStatus.RUNNING)
    assert [r.run_id for r in await runs.list(status=RunStatus.RUNNING)] == ["r4"]
    assert "r4" not in [r.run_id for r in await runs.list(status=RunStatus.QUEUED)]


async def test_list_skips_corrupt_records(runs: RunStore, fake_redis: Any, keys: Keys) -> None:
    await runs.create(_record("r1"))
    await runs.create(_record("r2", at=2000.0))
    await fake_redis.set(keys.run("r2"), "{garbage", keepttl=True)
    assert [r.run_id for r in await runs.list()] == ["r1"]


async def test_counts_by_status_follow_transitions(runs: RunStore) -> None:
    for i in range(3):
        await runs.create(_record(f"r{i}"))
    await runs.transition("r0", from_status={RunStatus.QUEUED}, to=RunStatus.RUNNING)
    counts = await runs.counts_by_status()
    assert counts == {
        "queued": 2,
        "running": 1,
        "waiting": 0,
        "completed": 0,
        "error": 0,
        "aborted": 0,
    }


async def test_expired_runs_leave_the_indexes(runs: RunStore) -> None:
    await runs.create(_record("r1"))
    await runs.create(_record("r2"))
    assert await runs.expire("r1", 0.05) is True
    assert await runs.expire("nope", 10) is False
    await runs.update("r1", worker_id="w")  # updates keep the TTL
    await asyncio.sleep(0.1)
    with pytest.raises(RunNotFound):
        await runs.get("r1")
    assert [r.run_id for r in await runs.list()] == ["r2"]
    assert (await runs.counts_by_status())["queued"] == 1


async def test_pruning_drops_expired_runs_from_every_index_without_a_listing(
    runs: RunStore, fake_redis: Any, keys: Keys
) -> None:
    await runs.create(_record("gone"))
    await runs.create(_record("kept"))
    await runs.expire("gone", 0.05)
    await asyncio.sleep(0.1)
    await runs.prune_expired()
    assert await fake_redis.zrange(keys.runs_index(), 0, -1) == [b"kept"]
    assert await fake_redis.zrange(keys.runs_by_status("queued"), 0, -1) == [b"kept"]
    assert await fake_redis.zcard(keys.runs_expiring()) == 0


# -- leases -------------------------------------------------------------------------------


@pytest.fixture
def leases(fake_redis: Any, keys: Keys) -> LeaseTable:
    return LeaseTable(fake_redis, keys)


async def test_a_renewed_lease_is_not_expired(leases: LeaseTable) -> None:
    assert await leases.renew("r1", attempt=1, worker_id="w1", ttl_s=10)
    assert await leases.expired() == []
    assert "r1" in await leases.expired(now_ms=time.time() * 1000 + 20_000)
    owner = await leases.owner("r1")
    assert owner is not None
    assert owner["worker"] == "w1"


async def test_an_expired_lease_is_claimed_once_and_fences_the_old_attempt(
    leases: LeaseTable,
) -> None:
    await leases.renew("r1", attempt=1, worker_id="w1", ttl_s=0.01)
    await asyncio.sleep(0.02)
    assert await leases.expired() == ["r1"]
    assert await leases.claim_expired("r1") == 1
    assert await leases.claim_expired("r1") is None
    assert await leases.expired() == []
    # The replaced attempt learns it lost; the retry (attempt 2) may hold the lease.
    assert await leases.renew("r1", attempt=1, worker_id="w1", ttl_s=10) is False
    assert await leases.renew("r1", attempt=2, worker_id="w2", ttl_s=10) is True


async def test_a_live_lease_cannot_be_claimed(leases: LeaseTable) -> None:
    await leases.renew("r1", attempt=1, worker_id="w1", ttl_s=10)
    assert await leases.claim_expired("r1") is None
    assert await leases.claim_expired("never-leased") is None


async def test_a_later_attempt_fences_an_earlier_one(leases: LeaseTable) -> None:
    await leases.renew("r1", attempt=2, worker_id="w2", ttl_s=10)
    assert await leases.renew("r1", attempt=1, worker_id="w1", ttl_s=10) is False


async def test_release_only_by_the_holder(leases: LeaseTable) -> None:
    await leases.renew("r1", attempt=2, worker_id="w", ttl_s=0.01)
    assert await leases.release("r1", 1) is False
    assert await leases.release("r1", 2) is True
    await asyncio.sleep(0.02)
    assert await leases.expired() == []
    assert await leases.renew("r1", attempt=2, worker_id="w", ttl_s=10) is False


async def test_concurrent_reapers_have_exactly_one_winner(leases: LeaseTable) -> None:
    await leases.renew("r1", attempt=3, worker_id="w", ttl_s=0.01)
    await asyncio.sleep(0.02)
    results = await asyncio.gather(*(leases.claim_expired("r1") for _ in range(10)))
    assert sorted(results, key=str) == [3] + [None] * 9


async def test_a_lease_with_a_corrupt_owner_is_still_claimed(
    leases: LeaseTable, fake_redis: Any, keys: Keys
) -> None:
    await leases.renew("r1", attempt=1, worker_id="w", ttl_s=0.01)
    await fake_redis.hset(keys.lease("r1"), "attempt", "many")
    await asyncio.sleep(0.02)
    assert await leases.claim_expired("r1") == 0


# -- workers ------------------------------------------------------------------------------


async def test_live_workers_are_listed_newest_beat_first(fake_redis: Any, keys: Keys) -> None:
    workers = WorkerRegistry(fake_redis, keys)
    await workers.beat("w1", {"host": "a", "jobs": 1}, ttl_s=10)
    await asyncio.sleep(0.01)
    await workers.beat("w2", {"host": "b"}, ttl_s=10)
    await workers.beat("dead", {}, ttl_s=0.001)
    await asyncio.sleep(0.01)
    listed = await workers.list()
    assert [w["worker_id"] for w in listed] == ["w2", "w1"]
    assert listed[1]["host"] == "a"
    assert listed[1]["jobs"] == 1
    await workers.remove("w2")
    assert [w["worker_id"] for w in await workers.list()] == ["w1"]


async def test_bad_heartbeats_are_skipped(fake_redis: Any, keys: Keys) -> None:
    workers = WorkerRegistry(fake_redis, keys)
    await workers.beat("w1", {}, ttl_s=10)
    await fake_redis.hset(keys.workers(), mapping={"w2": "{bad", "w3": '{"info": 1}'})
    assert [w["worker_id"] for w in await workers.list()] == ["w1"]


async def test_long_dead_workers_are_forgotten(fake_redis: Any, keys: Keys) -> None:
    workers = WorkerRegistry(fake_redis, keys)
    workers.forget_after_s = 0.0
    await workers.beat("gone", {}, ttl_s=0.001)
    await asyncio.sleep(0.01)
    assert await workers.list() == []
    assert await fake_redis.hlen(keys.workers()) == 0


async def test_pruning_the_registry_forgets_unreadable_heartbeats(
    fake_redis: Any, keys: Keys
) -> None:
    workers = WorkerRegistry(fake_redis, keys)
    await workers.beat("w1", {}, ttl_s=10)
    await fake_redis.hset(keys.workers(), mapping={"w2": "{bad"})
    await workers.prune()
    assert await fake_redis.hkeys(keys.workers()) == [b"w1"]
