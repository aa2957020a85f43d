"""The session's fork counter outlives every fork record of the session (keys.py `forks`,
store/forks.py's docstring), also for two ends that did not push it when first built
(found in review): a fork's end inside the refresh window a root's end opened, and a
queued fork ended by the client's abort (`Client._end_queued`: an end that wakes no
parent)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.runs import ForkInfo, RunRecord, RunStatus
from orchestrator.settings import Settings
from orchestrator.store.connection import Redis
from orchestrator.store.forks import ForkTable
from orchestrator.store.lifecycle import end_run
from orchestrator.store.runs import RunStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

_SETTINGS = Settings()  # defaults: runs kept 7 d, the stream 1 d (window 60 s)


def _record(run_id: str, status: RunStatus, fork: ForkInfo | None = None) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        session_id="s1",
        submitted_at=1000.0,
        agent="pkg:a",
        status=status,
        fork=fork,
    )


async def _fork(redis: Redis, keys: Keys, status: RunStatus) -> str:
    table = ForkTable(redis, keys, ttl_s=_SETTINGS.run_retention_s)
    (got,) = await table.allocate_many("s1", "p", ["k"], limit=10)
    assert got is not None
    assert got.fork_id == "fork_1"
    info = ForkInfo(
        fork_id="fork_1",
        parent_run_id="p",
        root_run_id="p",
        depth=1,
        fork_seq=1,
        memory_key="m",
    )
    await RunStore(redis, keys).create(_record("p.fork_1", status, info))
    return "p.fork_1"


async def _ended(redis: Redis, keys: Keys, run_id: str, status: RunStatus, **kw: Any) -> None:
    ended = await end_run(
        redis, keys, _SETTINGS, run_id=run_id, session_id="s1", status=status, **kw
    )
    assert ended is not None


async def _assert_counter_outlives(redis: Redis, keys: Keys, fork: str) -> None:
    counter, record = await redis.pttl(keys.forks("s1")), await redis.pttl(keys.run(fork))
    assert counter >= record, f"the counter expires {record - counter} ms before fork_1's record"


async def test_a_forks_end_in_the_window_of_a_root_end_keeps_the_counter(
    redis: Redis, keys: Keys
) -> None:
    # An earlier turn's root (no fork) ends: the session block runs (no counter push).
    await RunStore(redis, keys).create(_record("r0", RunStatus.RUNNING))
    await _ended(redis, keys, "r0", RunStatus.COMPLETED, from_status={RunStatus.RUNNING})
    # The next turn forks; the fork ends a moment later (well within the 60 s window).
    fork = await _fork(redis, keys, RunStatus.RUNNING)
    await asyncio.sleep(0.5)
    queue: Any = object()  # a worker's end passes its queue (wake_parent); no parent waits
    await _ended(
        redis, keys, fork, RunStatus.COMPLETED, from_status={RunStatus.RUNNING}, queue=queue
    )
    await _assert_counter_outlives(redis, keys, fork)


async def test_a_queued_fork_aborted_by_the_client_keeps_the_counter(
    redis: Redis, keys: Keys
) -> None:
    fork = await _fork(redis, keys, RunStatus.QUEUED)
    await asyncio.sleep(0.5)
    # As `Client._end_queued` ends it (client.abort of a queued fork): no queue.
    await _ended(
        redis, keys, fork, RunStatus.ABORTED, from_status={RunStatus.QUEUED}, abort_reason="stop"
    )
    await _assert_counter_outlives(redis, keys, fork)
