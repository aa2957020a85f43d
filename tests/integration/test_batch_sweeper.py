"""`BatchSweeper` on the real Redis, without workers: claims of dead workers are queued
again (once, however many sweepers), or recorded as failed after MAX_ITEM_RUNS; so are
claims of live workers whose job is no longer in progress; claims of live workers running
the job, or just-started workers, are left alone; finished batches are no longer swept.
A job's pick claims its item in the same script (no gap for a dying worker)."""

from __future__ import annotations

import json
import time

import pytest
from arq import func
from arq.constants import in_progress_key_prefix, job_key_prefix

from orchestrator.deluge.batch import read_result
from orchestrator.keys import Keys
from orchestrator.store.batches import BatchStore, item_job_id, parse_item_job_id
from orchestrator.store.connection import Redis, connect_arq
from orchestrator.store.runs import WorkerRegistry
from tests.integration.workerproc import drop_job_keys
from workers.arq_worker import WakeableWorker
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
        await store.create("b1", "{}", ["[]"] * 6)
        claims = {
            0: claim("dead", 1, 60),  # lost: run 2 is queued
            1: claim("dead", MAX_ITEM_RUNS, 60),  # lost too often: failed
            2: claim("alive", 1, 60),  # its worker lives and runs its job
            3: claim("dead", 1, 0),  # too fresh: maybe a worker that has not beaten yet
            5: claim("alive", 2, 60),  # its worker lives, but the job ended: run 3 queued
        }
        for index, raw in claims.items():
            await store.claim("b1", index, raw)
        await arq.set(in_progress_key_prefix + item_job_id("b1", 2), "1", ex=60)
        assert 0 < await arq.ttl(keys.batch_claims("b1")) <= await arq.ttl(keys.batch_meta("b1"))
        sweepers = [BatchSweeper(store, registry, interval_s=1, grace_s=5) for _ in range(2)]
        assert [await s.sweep_once() for s in sweepers] == [2, 0]
        for index, run in ((0, 2), (5, 3)):
            assert await arq.exists(job_key_prefix + item_job_id("b1", index, run=run))
            assert await arq.zscore(keys.queue(), item_job_id("b1", index, run=run)) is not None
        left = await store.claims("b1")
        assert sorted(left) == [2, 3]
        failed, _ = read_result((await store.results("b1"))[1])
        assert failed.is_error
        assert "died 3 times" in (failed.error_message or "")
        assert (await store.counters("b1"))["failed"] == "1"
        assert 0 < await arq.ttl(keys.batch_results("b1")) <= await arq.ttl(keys.batch_meta("b1"))
        # once every item has a result the batch leaves the sweep list
        for index in (0, 2, 3, 4, 5):
            await store.record("b1", index, "{}", failed=False, input_tokens=0,
                               output_tokens=0, cost=0.0)  # fmt: skip
        await sweepers[0].sweep_once()
        assert await store.active() == []
        assert await store.claims("b1") == {}
    finally:
        jobs = [item_job_id("b1", 0, run=2), item_job_id("b1", 5, run=3), item_job_id("b1", 2)]
        await drop_job_keys(arq, jobs)
        await arq.aclose()


async def test_picking_an_item_job_claims_it_in_the_same_step(redis_url: str, keys: Keys) -> None:
    """The pick marks the job in progress and claims the item at once: a worker that dies
    right after the pick leaves a claim the sweeper can see (there is no moment in between)."""
    arq = connect_arq(redis_url, keys.queue())
    jid = item_job_id("b2", 0)
    try:
        store = BatchStore(arq, keys)
        await store.create("b2", "{}", ["[]"])
        await store.enqueue("b2", [0])
        worker = WakeableWorker(
            functions=[func(_never_run, name="never")],
            queue_name=keys.queue(),
            redis_pool=arq,
            wake_channel=keys.wake(),
            pick_claim=lambda job_id: store.pick_claim(job_id, "w-picker"),
        )
        assert await worker._pick(jid.encode()) is not None
        assert await arq.exists(in_progress_key_prefix + jid)
        worker_id, run, at = json.loads((await store.claims("b2"))[0]).values()
        assert (worker_id, run) == ("w-picker", 1)
        assert time.time() - at < 5
        assert 0 < await arq.ttl(keys.batch_claims("b2")) <= await arq.ttl(keys.batch_meta("b2"))
        # picked once only; and a job that is not a batch item's claims nothing
        assert await worker._pick(jid.encode()) is None
        assert store.pick_claim("run-1:1:0", "w-picker") is None
    finally:
        await drop_job_keys(arq, [jid])
        await arq.aclose()


async def _never_run(ctx: dict[str, object]) -> None:
    raise AssertionError("not run in this test")


def test_item_job_ids_parse_back() -> None:
    assert parse_item_job_id(item_job_id("abc", 7)) == ("abc", 7, 1)
    assert parse_item_job_id(item_job_id("abc", 7, run=3)) == ("abc", 7, 3)
    for other in (
        "run-1:1:0",
        "batch:abc",
        "batch::1",
        "batch:abc:x",
        "batch:abc:1:q2",
        "batch:abc:1:r0",
    ):
        assert parse_item_job_id(other) is None
