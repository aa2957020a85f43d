"""Lease deadlines are scored in whole milliseconds: a small sorted set (a worker's lease
deadlines) is a listpack that keeps a whole score as an integer and a fractional one as
text, parsed again at every insert (ZADD into 100 members about 3x dearer on Redis 7.0).
The indexes runs are listed by keep exact submission times."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunStatus
from orchestrator.store.runs import LeaseTable, RunStore

pytestmark = pytest.mark.timeout(10)

SUBMITTED = 1_700_000_000.123456  # seconds, with a fraction of a millisecond


async def _scores(redis: Any, key: str) -> list[float]:
    return [score for _, score in await redis.zrange(key, 0, -1, withscores=True)]


async def test_a_runs_lease_deadlines_are_whole_milliseconds_and_its_index_scores_exact(
    fake_redis: Any, keys: Keys
) -> None:
    runs = RunStore(fake_redis, keys)
    record = RunRecord(run_id="r1", session_id="s1", agent="pkg:agent", submitted_at=SUBMITTED)
    await runs.create(record)
    assert await _scores(fake_redis, keys.runs_by_status(RunStatus.QUEUED)) == [SUBMITTED * 1000]
    start = await runs.start(
        "r1",
        session_id="s1",
        root_run_id="r1",
        attempt=1,
        worker_id="w1",
        lease_ttl_s=60.0005,
        check=lambda r: r.attempt == 1,
    )
    assert start.record is not None
    running = await _scores(fake_redis, keys.runs_by_status(RunStatus.RUNNING))
    assert running == [SUBMITTED * 1000]
    leases = LeaseTable(fake_redis, keys)
    for deadline in await _scores(fake_redis, keys.leases()):
        assert deadline.is_integer(), deadline
    assert await leases.renew("r1", attempt=1, worker_id="w1", ttl_s=30.0005)
    assert await leases.renew_many([("r1", 1)], worker_id="w1", ttl_s=30.0005) == [True]
    for deadline in await _scores(fake_redis, keys.leases()):
        assert deadline.is_integer(), deadline
