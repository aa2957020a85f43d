"""A run record read from Redis (untrusted contents) whose `submitted_at` is finite but
overflows once in milliseconds (1e306 s -> inf ms) is still scored ("inf", which Redis
takes) by `RunStore.start` (and `end`, `update`, `suspend`): flooring it in Python, as
round 8 tried, raised OverflowError, neither a StoreError nor a PayloadError."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunStatus
from orchestrator.store.runs import RunStore, Started

pytestmark = pytest.mark.timeout(10)


async def test_a_record_with_a_huge_submitted_at_still_starts(fake_redis: Any, keys: Keys) -> None:
    runs = RunStore(fake_redis, keys)
    record = RunRecord(run_id="r1", session_id="s1", agent="pkg:agent", submitted_at=1.0)
    await runs.create(record)
    # The stored record is changed behind the store's back (untrusted Redis contents).
    raw = record.model_copy(update={"submitted_at": 1e306}).model_dump_json()
    await fake_redis.set(keys.run("r1"), raw)
    fresh = RunStore(fake_redis, keys)  # no cached copy of what it wrote
    start = await fresh.start(
        "r1",
        session_id="s1",
        root_run_id="r1",
        attempt=1,
        worker_id="w1",
        lease_ttl_s=60.0,
        check=lambda r: r.attempt == 1,
    )
    assert start.outcome is Started.STARTED
    assert (await fresh.get("r1")).status is RunStatus.RUNNING
