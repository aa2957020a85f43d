"""A job's start and a run's end, each one script (`RunStore.start`, `RunStore.end`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.errors import PayloadError, RunNotFound
from orchestrator.keys import Keys
from orchestrator.runs import ForkInfo, RunRecord, RunStatus
from orchestrator.store import runs as runs_module
from orchestrator.store.runs import EndWrites, LeaseTable, RunStore, Started

pytestmark = pytest.mark.timeout(10)


def _record(run_id: str, **kw: Any) -> RunRecord:
    kw.setdefault("agent", "pkg:agent")
    return RunRecord(run_id=run_id, session_id="s1", submitted_at=1000.0, **kw)


@pytest.fixture
def runs(fake_redis: Any, keys: Keys) -> RunStore:
    return RunStore(fake_redis, keys)


def _forget(run_id: str) -> None:
    """As if another process had written the record (no guess of it here)."""
    runs_module._LAST_WRITTEN.pop(run_id, None)


async def _start(runs: RunStore, run_id: str = "r1", attempt: int = 1, **kw: Any) -> Any:
    kw.setdefault("check", lambda record: record.attempt == attempt)
    return await runs.start(
        run_id,
        session_id="s1",
        root_run_id=run_id,
        attempt=attempt,
        worker_id="w1",
        lease_ttl_s=60,
        **kw,
    )


@pytest.mark.parametrize("guessed", [True, False])
async def test_a_start_moves_the_run_to_running_and_takes_its_lease(
    runs: RunStore, fake_redis: Any, keys: Keys, guessed: bool
) -> None:
    await runs.create(_record("r1"))
    if not guessed:
        _forget("r1")
    start = await _start(runs, segment=0)
    assert start.outcome is Started.STARTED
    assert start.abort_reason is None
    stored = await runs.get("r1")
    assert stored == start.record
    assert stored.status is RunStatus.RUNNING
    assert stored.worker_id == "w1"
    assert stored.started_at is not None
    assert await runs.list(status=RunStatus.RUNNING) == [stored]
    assert await runs.list(status=RunStatus.QUEUED) == []
    owner = await LeaseTable(fake_redis, keys).owner("r1")
    assert owner is not None
    assert owner["attempt"] == "1"
    assert owner["state"] == "held"


async def test_a_stale_guess_of_the_record_is_read_again(runs: RunStore) -> None:
    await runs.create(_record("r1"))
    await runs.update("r1", attempt=2)  # remembered here, then changed elsewhere:
    await runs.update("r1", tenant="acme")
    runs_module._LAST_WRITTEN["r1"] = (b"{}", _record("r1", attempt=2))
    start = await _start(runs, attempt=2)
    assert start.outcome is Started.STARTED
    assert (await runs.get("r1")).tenant == "acme"


async def test_a_job_the_run_does_not_expect_changes_nothing(runs: RunStore) -> None:
    await runs.create(_record("r1", attempt=2))
    start = await _start(runs, attempt=1)
    assert start.outcome is Started.NOT_CURRENT
    assert (await runs.get("r1")).status is RunStatus.QUEUED


async def test_an_unknown_run_is_not_found(runs: RunStore) -> None:
    with pytest.raises(RunNotFound):
        await _start(runs, "nope")


async def test_a_run_aborted_before_it_started_is_not_started(
    runs: RunStore, fake_redis: Any, keys: Keys
) -> None:
    await runs.create(_record("r1"))
    await fake_redis.set(keys.run_abort("s1", "r1"), json.dumps({"reason": "stop", "at": 1}))
    start = await _start(runs)
    assert start.outcome is Started.ABORTED
    assert start.abort_reason == "stop"
    assert (await runs.get("r1")).status is RunStatus.QUEUED
    assert await LeaseTable(fake_redis, keys).owner("r1") is None


async def test_a_started_run_of_an_aborted_session_starts_with_the_reason(
    runs: RunStore, fake_redis: Any, keys: Keys
) -> None:
    await runs.create(_record("r1", status=RunStatus.WAITING, started_at=5.0))
    await fake_redis.set(keys.abort("s1"), json.dumps({"reason": "bye", "at": 1}))
    start = await _start(runs, check=lambda record: True, segment=1)
    assert start.outcome is Started.STARTED
    assert start.abort_reason == "bye"
    assert start.record.started_at == 5.0
    assert start.record.segment == 1


async def test_a_start_refused_by_a_later_lease_writes_nothing(
    runs: RunStore, fake_redis: Any, keys: Keys
) -> None:
    await runs.create(_record("r1"))
    leases = LeaseTable(fake_redis, keys)
    assert await leases.renew("r1", attempt=2, worker_id="w2", ttl_s=60)
    start = await _start(runs, attempt=1)
    assert start.outcome is Started.LEASE_TAKEN
    assert (await runs.get("r1")).status is RunStatus.QUEUED
    owner = await leases.owner("r1")
    assert owner is not None
    assert owner["worker"] == "w2"


def _writes(**kw: Any) -> EndWrites:
    return EndWrites(session_id="s1", run_ttl_s=600, stream_ttl_s=300, **kw)


@pytest.mark.parametrize("guessed", [True, False])
async def test_an_end_writes_the_record_drops_the_checkpoint_and_releases_the_lease(
    runs: RunStore, fake_redis: Any, keys: Keys, guessed: bool
) -> None:
    await runs.create(_record("r1"))
    assert (await _start(runs)).outcome is Started.STARTED
    await fake_redis.hset(keys.checkpoint("s1", "r1"), mapping={"attempt": "1", "state": "x"})
    if not guessed:
        _forget("r1")
    ended = await runs.end(
        "r1",
        status=RunStatus.COMPLETED,
        from_status={RunStatus.RUNNING},
        writes=_writes(release_attempt=1, drop_checkpoint=True),
        attempt=1,
        response="ok",
    )
    assert ended is not None
    assert ended.record.status is RunStatus.COMPLETED
    assert await runs.get("r1") == ended.record
    assert await runs.list(status=RunStatus.COMPLETED) == [ended.record]
    assert await runs.list(status=RunStatus.RUNNING) == []
    assert 0 < await fake_redis.pttl(keys.run("r1")) <= 600_000
    assert await fake_redis.hgetall(keys.checkpoint("s1", "r1")) == {b"attempt": b"1"}
    leases = LeaseTable(fake_redis, keys)
    assert await leases.expired(now_ms=10**15) == []
    owner = await leases.owner("r1")
    assert owner is not None
    assert owner["state"] == "released"
    assert owner["fence"] == "2"
    # Not the status it is in now: nothing changes.
    assert (
        await runs.end(
            "r1", status=RunStatus.ERROR, from_status={RunStatus.RUNNING}, writes=_writes()
        )
        is None
    )


async def test_the_last_fork_to_end_brings_its_waiting_parent(
    runs: RunStore, fake_redis: Any, keys: Keys
) -> None:
    await runs.create(_record("p", status=RunStatus.RUNNING))
    forks = []
    for n in (1, 2):
        info = ForkInfo(
            fork_id=f"fork_{n}",
            parent_run_id="p",
            root_run_id="p",
            depth=1,
            fork_seq=n,
            memory_key="m",
        )
        await runs.create(_record(f"p.fork_{n}", status=RunStatus.RUNNING, fork=info))
        forks.append(f"p.fork_{n}")
    assert await runs.suspend("p", attempt=1, segment=0, waiting_for=forks)
    writes = _writes(wake_parent=True)
    first = await runs.end(
        "p.fork_1", status=RunStatus.COMPLETED, from_status={RunStatus.RUNNING}, writes=writes
    )
    assert first is not None
    assert not first.last_fork
    _forget("p.fork_2")
    last = await runs.end(
        "p.fork_2", status=RunStatus.COMPLETED, from_status={RunStatus.RUNNING}, writes=writes
    )
    assert last is not None
    assert last.last_fork
    assert last.parent is not None
    assert last.parent.status is RunStatus.WAITING


async def test_an_end_keeps_the_session_owner_alive_past_its_stream(
    runs: RunStore, fake_redis: Any, keys: Keys
) -> None:
    owner, index = keys.session_owner("s1"), keys.session_runs("s1")
    await fake_redis.set(owner, "-", px=1_000)
    await fake_redis.zadd(index, {"r1": 1.0})
    await fake_redis.pexpire(index, 1_000)
    for n in (1, 2):
        await runs.create(_record(f"r{n}", status=RunStatus.RUNNING))
        ended = await runs.end(
            f"r{n}", status=RunStatus.COMPLETED, from_status={RunStatus.RUNNING}, writes=_writes()
        )
        assert ended is not None
        # Both outlive the stream's 300 s (refreshed once, not by every end).
        assert await fake_redis.pttl(owner) > 300_000
        assert await fake_redis.pttl(index) > 300_000


async def test_finishing_an_ended_run_again_announces_it_and_changes_nothing_else(
    runs: RunStore, fake_redis: Any, keys: Keys
) -> None:
    await runs.create(_record("r1", status=RunStatus.COMPLETED))
    record = await runs.get("r1")
    async with fake_redis.pubsub() as pubsub:
        await pubsub.subscribe(keys.run_ends())
        await pubsub.get_message(timeout=1)
        ended = await runs.finish(record, _writes())
        message = await pubsub.get_message(timeout=1)
    assert ended.record == record
    assert message is not None
    assert message["data"] == b"r1"
    assert await runs.get("r1") == record
    assert 0 < await fake_redis.pttl(keys.run("r1")) <= 600_000


async def test_leases_are_renewed_together_each_as_renew_would(fake_redis: Any, keys: Keys) -> None:
    leases = LeaseTable(fake_redis, keys)
    assert await leases.renew("held", attempt=1, worker_id="w", ttl_s=0.001)
    assert await leases.renew("replaced", attempt=2, worker_id="w2", ttl_s=60)
    await fake_redis.hset(keys.lease("corrupt"), "attempt", "many")
    renewed = await leases.renew_many(
        [("held", 1), ("replaced", 1), ("corrupt", 1)],
        worker_id="w",
        ttl_s=60,
        extend_only=True,
    )
    assert renewed == [True, False, None]
    assert await leases.expired() == []
    assert await leases.renew_many([], worker_id="w", ttl_s=60) == []


async def test_a_lease_key_of_another_type_fails_only_its_own_renewal(
    fake_redis: Any, keys: Keys
) -> None:
    leases = LeaseTable(fake_redis, keys)
    assert await leases.renew("held", attempt=1, worker_id="w", ttl_s=60)
    await fake_redis.set(keys.lease("broken"), "not a hash")
    renewed = await leases.renew_many(
        [("broken", 1), ("held", 1)], worker_id="w", ttl_s=60, extend_only=True
    )
    assert renewed == [None, True]


async def test_a_suspend_on_a_stale_guess_of_the_record_reads_it_again(
    runs: RunStore,
) -> None:
    await runs.create(_record("p", status=RunStatus.RUNNING))
    await runs.create(_record("p.fork_1", status=RunStatus.RUNNING))
    await runs.update("p", tenant="acme")  # the guess below is stale:
    runs_module._LAST_WRITTEN["p"] = (b"{}", _record("p", status=RunStatus.RUNNING))
    assert await runs.suspend("p", attempt=1, segment=0, waiting_for=["p.fork_1"])
    parked = await runs.get("p")
    assert parked.status is RunStatus.WAITING
    assert parked.tenant == "acme"
    assert parked.waiting_for == ["p.fork_1"]
    # A guess that is not this attempt's is checked against the real record too.
    await runs.create(_record("q", status=RunStatus.RUNNING))
    await runs.create(_record("q.fork_1", status=RunStatus.RUNNING))
    runs_module._LAST_WRITTEN["q"] = (b"{}", _record("q", status=RunStatus.RUNNING, attempt=9))
    assert await runs.suspend("q", attempt=1, segment=0, waiting_for=["q.fork_1"])


async def test_a_parked_lease_is_not_reaped_and_a_corrupt_one_says_so(
    fake_redis: Any, keys: Keys
) -> None:
    leases = LeaseTable(fake_redis, keys)
    assert await leases.renew("r", attempt=2, worker_id="w1", ttl_s=0.001)
    assert not await leases.park("r", 1), "not this attempt's lease"
    assert not await leases.park("none", 2), "no lease at all"
    assert await leases.park("r", 2)
    assert await leases.expired(now_ms=10**15) == []
    owner = await leases.owner("r")
    assert owner is not None
    assert owner["state"] == "parked"
    await fake_redis.hset(keys.lease("bad"), "attempt", "x")
    with pytest.raises(PayloadError):
        await leases.park("bad", 1)
