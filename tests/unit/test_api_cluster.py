"""The cluster page's data: worker heartbeats read defensively, recent ends read from the
run indexes (no counters written), counted per bucket for the throughput charts."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from orchestrator.api.cluster import throughput, worker_view
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunStatus
from orchestrator.store.runs import RunStore
from orchestrator.store.throughput import Ended, RecentEnds

pytestmark = pytest.mark.timeout(10)


def test_a_heartbeat_becomes_a_worker_row_with_its_age_and_benched_keys() -> None:
    now = 1000.0
    beat = {
        "worker_id": "host:1:ab",
        "host": "host",
        "pid": 1,
        "running": 3,
        "concurrency": 10,
        "last_beat": 998.5,
        "agents": ["m:a", "m:b"],
        "benched_keys": [
            {"model": "gpt", "key_index": 2, "keys": 3, "status": 401, "retry_in_s": 30.0}
        ],
    }
    row = worker_view(beat, now)
    assert (row.worker_id, row.running, row.concurrency, row.agents) == ("host:1:ab", 3, 10, 2)
    assert row.heartbeat_age_s == 1.5
    assert [(k.key_index, k.retry_in_s) for k in row.benched_keys] == [(2, 28.5)]


def test_a_heartbeat_with_garbage_fields_still_makes_a_row() -> None:
    beat: dict[str, Any] = {
        "worker_id": "w",
        "host": 5,
        "pid": "x",
        "running": -2,
        "concurrency": math.nan,
        "last_beat": "yesterday",
        "agents": "all",
        "benched_keys": [{"model": "m"}],
    }
    row = worker_view(beat, 50.0)
    assert (row.host, row.pid, row.running, row.concurrency, row.agents) == (None, None, 0, 0, 0)
    assert row.heartbeat_age_s == 0.0
    assert row.benched_keys == []


def test_ends_are_counted_per_bucket_forks_apart_from_runs() -> None:
    now = 1000.0  # buckets of 10 s: the last one starts at 1000
    ends = [
        Ended("a", 1000.5, RunStatus.COMPLETED),
        Ended("a.fork_1", 999.0, RunStatus.COMPLETED),
        Ended("a.fork_2", 995.0, RunStatus.ERROR),
        Ended("a.fork_3", 975.0, RunStatus.ABORTED),
        Ended("old", 900.0, RunStatus.COMPLETED),  # before the window
    ]
    chart = throughput(ends, now=now, window_s=40, bucket_s=10)
    assert (chart.start, chart.window_s, chart.bucket_s) == (970.0, 40, 10)
    assert chart.runs.completed == [0, 0, 0, 1]
    assert chart.forks.completed == [0, 0, 1, 0]
    assert chart.forks.failed == [1, 0, 1, 0]


async def test_recent_ends_come_from_the_expiring_index(fake_redis: Any, keys: Keys) -> None:
    store = RunStore(fake_redis, keys)
    retention = 3600.0
    for run_id, status in (("r1", RunStatus.COMPLETED), ("r1.fork_1", RunStatus.ERROR)):
        await store.create(RunRecord(run_id=run_id, session_id="s", agent="m:f", status=status))
        await store.expire(run_id, retention)  # what ending a run does
    await store.create(RunRecord(run_id="live", session_id="s", agent="m:f"))

    before = time.time()
    ends = await RecentEnds(fake_redis, keys, retention_s=retention).since(before - 60)
    assert [(e.run_id, e.status, e.is_fork) for e in ends] == [
        ("r1", RunStatus.COMPLETED, False),
        ("r1.fork_1", RunStatus.ERROR, True),
    ]
    assert all(before - 5 < e.at <= time.time() for e in ends)
    assert await RecentEnds(fake_redis, keys, retention_s=retention).since(time.time() + 5) == []
