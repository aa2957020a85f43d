"""`BatchSweeper` on the real Redis, without workers: claims of dead workers are queued
again (once, however many sweepers), or recorded as failed after MAX_ITEM_RUNS; claims of
live or just-started workers are left alone; finished batches are no longer swept."""

from __future__ import annotations

import json
import time

import pytest
from arq.constants import job_key_prefix

from orchestrator.deluge.batch import read_result
from orchestrator.keys import Keys
from orchestrator.store.batches import BatchStore, item_job_id
from orchestrator.store.connection import Redis, connect_arq
from orchestrator.store.runs import WorkerRegistry
from tests.integration.workerproc import drop_job_keys
from workers.batches import MAX_ITEM_RUNS, BatchSweeper

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]


def claim(worker: str, run: int, age_s: float) -> str:
    return json.dumps({"worker": worker, "run": run, "at": time.time() - age_s})


async def test_lost_items_are_requeued_once_or_failed(
    redis_url: str, redis: Redis, keys: Keys
) -> None:
    arq = connect_arq(redis_url, keys.queue())
    try:
        store = BatchStore(arq, keys)
        registry = WorkerRegistry(arq, keys)
        await registry.beat("alive", {}, ttl_s=30)
        await store.create("b1", "{}", ["[]"] * 5)
        claims = {
            0: claim("dead", 1, 60),  # lost: run 2 is queued
            1: claim("dead", MAX_ITEM_RUNS, 60),  # lost too often: failed
            2: claim("alive", 1, 60),  # its worker lives
            3: claim("dead", 1, 0),  # too fresh: maybe a worker that has not beaten yet
        }
        for index, raw in claims.items():
            await store.claim("b1", index, raw)
        assert 0 < await arq.ttl(keys.batch_claims("b1")) <= await arq.ttl(keys.batch_meta("b1"))
        sweepers = [BatchSweeper(store, registry, interval_s=1, grace_s=5) for _ in range(2)]
        assert [await s.sweep_once() for s in sweepers] == [1, 0]
        assert await arq.exists(job_key_prefix + item_job_id("b1", 0, run=2))
        assert await arq.zscore(keys.queue(), item_job_id("b1", 0, run=2)) is not None
        left = await store.claims("b1")
        assert sorted(left) == [2, 3]
        failed, _ = read_result((await store.results("b1"))[1])
        assert failed.is_error
        assert "died 3 times" in (failed.error_message or "")
        assert (await store.counters("b1"))["failed"] == "1"
        assert 0 < await arq.ttl(keys.batch_results("b1")) <= await arq.ttl(keys.batch_meta("b1"))
        # once every item has a result the batch leaves the sweep list
        for index in (0, 2, 3, 4):
            await store.record("b1", index, "{}", failed=False, input_tokens=0,
                               output_tokens=0, cost=0.0)  # fmt: skip
        await sweepers[0].sweep_once()
        assert await store.active() == []
        assert await store.claims("b1") == {}
    finally:
        await drop_job_keys(arq, [item_job_id("b1", 0, run=2)])
        await arq.aclose()
