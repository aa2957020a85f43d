"""The worker's lean arq bookkeeping on the real Redis (`workers.arq_jobs`): a job is
picked, read and counted in one script and finished in another, with arq's semantics: its
try is counted once per pick and max_tries holds, Retry puts it back, the timeout fails it,
a job whose payload is gone fails as expired, results are arq's; and a pick or finish
whose round trip fails on the way is repaired once Redis answers (through a proxy that
drops what the test says)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from arq import func
from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.worker import Retry
from redis import exceptions as redis_errors

from orchestrator.keys import Keys
from orchestrator.runs import RunRequest
from orchestrator.store import jsonserial
from orchestrator.store.connection import Redis, connect_arq, run_scripts
from orchestrator.store.jsonserial import JobDecoder
from orchestrator.store.queue import JobQueue, job_id
from orchestrator.store.runs import Rider
from tests.integration.workerproc import drop_job_keys
from workers.arq_jobs import JOB_FINISH
from workers.arq_worker import WakeableWorker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

PAYLOAD = {"run_id": "r1", "message": "hello"}


class DroppingProxy:
    """A TCP proxy to the real Redis that drops requests or replies while told to."""

    def __init__(self, port: int = 6379) -> None:
        self.upstream_port = port
        self.drop_requests = False
        self.drop_replies = False
        self.reply_delay_s = 0.0
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        for pump in (
            self._pump(reader, up_writer, lambda: self.drop_requests),
            self._pump(up_reader, writer, lambda: self.drop_replies, self),
        ):
            task = asyncio.create_task(pump)
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    @staticmethod
    async def _pump(
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        dropping: Callable[[], bool],
        delaying: DroppingProxy | None = None,
    ) -> None:
        try:
            while data := await src.read(65536):
                if delaying is not None and delaying.reply_delay_s:
                    await asyncio.sleep(delaying.reply_delay_s)
                if not dropping():
                    dst.write(data)
                    await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[DroppingProxy]:
    made = DroppingProxy(urlsplit(redis_url).port or 6379)
    try:
        yield made
    finally:
        await made.stop()


class Jobs:
    """A queue of the test's own, its job ids (their arq keys deleted after), and calls."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.queue = keys.queue()
        self.ids: list[str] = []
        self.calls: list[dict[str, Any]] = []

    async def enqueue(self, function: str = "work", *, payload: bool = True) -> str:
        jid = f"arqjobs-{uuid.uuid4().hex}"
        self.ids.append(jid)
        now_ms = int(time.time() * 1000)
        if payload:
            body = {"t": None, "f": function, "a": [PAYLOAD], "k": {}, "et": now_ms}
            await self.redis.set(job_key_prefix + jid, json.dumps(body), px=600_000)
        await self.redis.zadd(self.queue, {jid: now_ms - 1})
        return jid

    async def result(self, jid: str) -> dict[str, Any]:
        raw = await self.redis.get(result_key_prefix + jid)
        assert raw is not None, f"no result for {jid}"
        result: dict[str, Any] = json.loads(raw)
        return result

    async def leftovers(self, jid: str) -> list[str]:
        """arq's keys of a finished job that should be gone (and the queue entry)."""
        names = [p + jid for p in (in_progress_key_prefix, retry_key_prefix, job_key_prefix)]
        left = [n for n in names if await self.redis.exists(n)]
        if await self.redis.zscore(self.queue, jid) is not None:
            left.append("queue entry")
        return left


@pytest.fixture
async def jobs(redis: Redis, keys: Keys) -> AsyncIterator[Jobs]:
    made = Jobs(redis, keys)
    try:
        yield made
    finally:
        await drop_job_keys(redis, made.ids)


def _worker(
    pool: Any, jobs: Jobs, work: Callable[..., Awaitable[Any]], **kwargs: Any
) -> WakeableWorker:
    options: dict[str, Any] = {
        "burst": True,
        "handle_signals": False,
        "poll_delay": 0.05,
        "keep_result": 60,
        "retry_jobs": False,
        "max_tries": 1,
        "job_serializer": jsonserial.dumps,
        "job_deserializer": JobDecoder(),
        **kwargs,
    }
    function = func(work, name="work", max_tries=options.pop("function_tries", None),
                    timeout=options.pop("timeout", None))  # fmt: skip
    return WakeableWorker(
        functions=[function],
        queue_name=jobs.queue,
        redis_pool=pool,
        wake_channel=jobs.queue + ":wake",
        **options,
    )


async def _wait_for(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_job_runs_once_with_its_try_counted_and_leaves_only_its_result(
    redis_url: str, jobs: Jobs
) -> None:
    pool = connect_arq(redis_url, jobs.queue)

    async def work(ctx: dict[str, Any], payload: Any) -> dict[str, Any]:
        jobs.calls.append({"try": ctx["job_try"], "id": ctx["job_id"], "payload": payload})
        return {"status": "completed"}

    try:
        jid = await jobs.enqueue()
        worker = _worker(pool, jobs, work)
        await asyncio.wait_for(worker.async_run(), 10)
        assert jobs.calls == [{"try": 1, "id": jid, "payload": PAYLOAD}]
        assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
        result = await jobs.result(jid)
        assert (result["s"], result["r"], result["t"], result["a"]) == (
            True, {"status": "completed"}, 1, [PAYLOAD],
        )  # fmt: skip
        assert 0 < await pool.pttl(result_key_prefix + jid) <= 60_000
        assert await jobs.leftovers(jid) == []
    finally:
        await pool.aclose()


async def test_a_job_past_its_max_tries_fails_without_running_and_one_within_them_runs(
    redis_url: str, jobs: Jobs
) -> None:
    """A dead worker's pick counted a try (its retry key); the next pick counts another."""
    pool = connect_arq(redis_url, jobs.queue)

    async def work(ctx: dict[str, Any], payload: Any) -> None:
        jobs.calls.append({"try": ctx["job_try"], "id": ctx["job_id"]})

    try:
        spent = await jobs.enqueue()
        await pool.set(retry_key_prefix + spent, 1, ex=600)
        worker = _worker(pool, jobs, work)
        await asyncio.wait_for(worker.async_run(), 10)
        assert jobs.calls == []
        assert worker.jobs_failed == 1
        failed = await jobs.result(spent)
        assert failed["s"] is False
        assert "max 1 retries exceeded" in failed["r"]["error"]
        assert failed["t"] == 2
        assert await jobs.leftovers(spent) == []

        again = await jobs.enqueue()
        await pool.set(retry_key_prefix + again, 1, ex=600)
        worker = _worker(pool, jobs, work, function_tries=2)
        await asyncio.wait_for(worker.async_run(), 10)
        assert jobs.calls == [{"try": 2, "id": again}]
        assert await jobs.leftovers(again) == []
    finally:
        await pool.aclose()


async def test_a_retry_puts_the_job_back_and_its_next_run_sees_the_next_try(
    redis_url: str, jobs: Jobs
) -> None:
    pool = connect_arq(redis_url, jobs.queue)

    async def work(ctx: dict[str, Any], payload: Any) -> str:
        jobs.calls.append({"try": ctx["job_try"]})
        if ctx["job_try"] == 1:
            raise Retry(defer=0.05)
        return "second time lucky"

    try:
        jid = await jobs.enqueue()
        worker = _worker(pool, jobs, work, retry_jobs=True, max_tries=3)
        await asyncio.wait_for(worker.async_run(), 10)
        assert jobs.calls == [{"try": 1}, {"try": 2}]
        assert (worker.jobs_retried, worker.jobs_complete) == (1, 1)
        assert (await jobs.result(jid))["r"] == "second time lucky"
        assert await jobs.leftovers(jid) == []
    finally:
        await pool.aclose()


async def test_a_job_past_its_timeout_is_cancelled_and_recorded_as_failed(
    redis_url: str, jobs: Jobs
) -> None:
    pool = connect_arq(redis_url, jobs.queue)
    cancelled = asyncio.Event()

    async def work(ctx: dict[str, Any], payload: Any) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    try:
        jid = await jobs.enqueue()
        worker = _worker(pool, jobs, work, timeout=0.2)
        started = time.monotonic()
        await asyncio.wait_for(worker.async_run(), 10)
        assert time.monotonic() - started < 5
        assert cancelled.is_set()
        assert worker.jobs_failed == 1
        result = await jobs.result(jid)
        assert result["s"] is False
        assert result["r"]["error_type"] == "TimeoutError"
        assert await jobs.leftovers(jid) == []
    finally:
        await pool.aclose()


async def test_a_job_whose_payload_is_gone_fails_as_expired_and_leaves_the_queue(
    redis_url: str, jobs: Jobs
) -> None:
    pool = connect_arq(redis_url, jobs.queue)

    async def work(ctx: dict[str, Any], payload: Any) -> None:
        jobs.calls.append({"id": ctx["job_id"]})

    try:
        gone = await jobs.enqueue(payload=False)
        worker = _worker(pool, jobs, work)
        await asyncio.wait_for(worker.async_run(), 10)
        assert jobs.calls == []
        assert worker.jobs_failed == 1
        result = await jobs.result(gone)
        assert (result["s"], result["f"]) == (False, "<unknown>")
        assert "job expired" in result["r"]["error"]
        assert await jobs.leftovers(gone) == []
    finally:
        await pool.aclose()


async def test_a_job_whose_keys_are_not_arqs_is_removed_and_counted(
    redis_url: str, jobs: Jobs
) -> None:
    pool = connect_arq(redis_url, jobs.queue)

    async def work(ctx: dict[str, Any], payload: Any) -> None:
        jobs.calls.append({"id": ctx["job_id"]})

    try:
        broken = await jobs.enqueue(payload=False)
        await pool.hset(job_key_prefix + broken, "not", "a job")
        worker = _worker(pool, jobs, work)
        await asyncio.wait_for(worker.async_run(), 10)
        assert jobs.calls == []
        assert worker.malformed_entries == 1
        assert (await jobs.result(broken))["s"] is False
        assert await jobs.leftovers(broken) == []
    finally:
        await pool.aclose()


async def test_a_pick_whose_reply_was_lost_is_undone_once_redis_answers(
    redis_url: str, redis: Redis, jobs: Jobs, proxy: DroppingProxy
) -> None:
    """The pick ran in Redis but its reply never came: the job was left in progress with
    a try counted and nobody running it. It is given back, and then runs on try 1."""
    pool = connect_arq(await proxy.start(), jobs.queue, timeout_s=0.3)

    async def work(ctx: dict[str, Any], payload: Any) -> None:
        jobs.calls.append({"try": ctx["job_try"]})

    try:
        jid = await jobs.enqueue()
        worker = _worker(pool, jobs, work)
        jobs.ids.append("arqjobs-none")
        assert await worker._pick(b"arqjobs-none") is None  # Redis has the script now
        proxy.drop_replies = True
        picking = asyncio.create_task(worker.start_jobs([jid.encode()]))

        async def picked() -> bool:
            return bool(await redis.exists(in_progress_key_prefix + jid))

        await _wait_for(picked, 5, "the pick to run in redis")
        await asyncio.sleep(0.5)  # past the client's timeout: the repair waits for redis
        assert await redis.get(retry_key_prefix + jid) == b"1"
        proxy.drop_replies = False
        with pytest.raises(redis_errors.TimeoutError):
            await asyncio.wait_for(picking, 10)
        assert (worker.job_counter, worker.tasks) == (0, {})
        assert not await redis.exists(in_progress_key_prefix + jid)
        assert not await redis.exists(retry_key_prefix + jid)
        assert await redis.zscore(jobs.queue, jid) is not None  # still queued

        await asyncio.wait_for(worker.async_run(), 10)
        assert jobs.calls == [{"try": 1}]
        assert await jobs.leftovers(jid) == []
    finally:
        await pool.aclose()


async def test_undoing_a_lost_pick_leaves_a_pick_another_worker_made_since(
    redis_url: str, redis: Redis, jobs: Jobs
) -> None:
    pool = connect_arq(redis_url, jobs.queue)

    async def work(ctx: dict[str, Any], payload: Any) -> None:
        raise AssertionError("not run in this test")

    try:
        jid = await jobs.enqueue()
        await redis.set(in_progress_key_prefix + jid, b"1", px=60_000)  # another's pick
        await redis.set(retry_key_prefix + jid, b"1", ex=600)
        worker = _worker(pool, jobs, work)
        await worker._repair_pick(jid.encode())
        assert await redis.get(in_progress_key_prefix + jid) == b"1"
        assert await redis.get(retry_key_prefix + jid) == b"1"
    finally:
        await pool.aclose()


async def test_a_job_whose_finish_failed_on_the_way_is_removed_once_redis_answers(
    redis_url: str, redis: Redis, jobs: Jobs, proxy: DroppingProxy
) -> None:
    """The job ran; its finish never reached Redis. It is not run again: once Redis
    answers, its keys and queue entry are removed (as before, with arq's finish)."""
    pool = connect_arq(await proxy.start(), jobs.queue, timeout_s=0.3)

    async def work(ctx: dict[str, Any], payload: Any) -> None:
        jobs.calls.append({"try": ctx["job_try"]})
        proxy.drop_requests = True  # the finish will not arrive

    try:
        jid = await jobs.enqueue()
        worker = _worker(pool, jobs, work)
        running = asyncio.create_task(worker.async_run())
        await asyncio.sleep(1.0)  # the finish timed out; the repair waits for redis
        assert jobs.calls == [{"try": 1}]
        assert await redis.exists(in_progress_key_prefix + jid)
        proxy.drop_requests = False
        await asyncio.wait_for(running, 10)
        assert jobs.calls == [{"try": 1}]
        assert await jobs.leftovers(jid) == []
        assert not await redis.exists(result_key_prefix + jid)
    finally:
        await pool.aclose()


async def test_the_jobs_for_all_free_slots_are_picked_in_one_round_trip(
    redis_url: str, jobs: Jobs, proxy: DroppingProxy
) -> None:
    """With 0.2 s per reply, 20 picks one after the other would take 4 s."""
    pool = connect_arq(await proxy.start(), jobs.queue)
    release = asyncio.Event()

    async def work(ctx: dict[str, Any], payload: Any) -> None:
        jobs.calls.append({"id": ctx["job_id"], "try": ctx["job_try"]})
        await release.wait()

    try:
        listed = [await jobs.enqueue() for _ in range(25)]
        worker = _worker(pool, jobs, work, max_jobs=20)
        await worker._pick(b"arqjobs-none")  # Redis has the script now
        jobs.ids.append("arqjobs-none")
        proxy.reply_delay_s = 0.2
        started = time.monotonic()
        picking = asyncio.create_task(worker.start_jobs([jid.encode() for jid in listed]))
        await _wait_for(lambda: _true(len(jobs.calls) == 20), 5, "20 jobs to start")
        assert time.monotonic() - started < 1.5
        assert {c["id"] for c in jobs.calls} == set(listed[:20])
        assert {c["try"] for c in jobs.calls} == {1}
        assert worker.job_counter == 20
        await asyncio.wait_for(picking, 10)  # no slot left: the rest wait for a poll
        proxy.reply_delay_s = 0.0
        release.set()
        await asyncio.wait_for(asyncio.gather(*worker.tasks.values()), 10)
        await worker.start_jobs([jid.encode() for jid in listed])
        await asyncio.wait_for(asyncio.gather(*worker.tasks.values()), 10)
        assert sorted(c["id"] for c in jobs.calls) == sorted(listed)
        assert [await jobs.leftovers(jid) for jid in listed] == [[]] * 25
    finally:
        await pool.aclose()


async def _true(value: bool) -> bool:
    return value


async def test_a_job_this_worker_is_running_is_not_picked_again_when_listed(
    redis_url: str, jobs: Jobs, proxy: DroppingProxy
) -> None:
    """It stays queued until it finishes, so every poll lists it: no round trip for it."""
    pool = connect_arq(await proxy.start(), jobs.queue, timeout_s=0.3)
    release = asyncio.Event()

    async def work(ctx: dict[str, Any], payload: Any) -> None:
        jobs.calls.append({"try": ctx["job_try"]})
        await release.wait()

    try:
        jid = await jobs.enqueue()
        worker = _worker(pool, jobs, work)
        await worker.start_jobs([jid.encode()])
        await _wait_for(lambda: _true(len(jobs.calls) == 1), 5, "the job to start")
        proxy.drop_requests = True  # a pick now would time out
        await asyncio.wait_for(worker.start_jobs([jid.encode()]), 5)
        assert worker.job_counter == 1
        proxy.drop_requests = False
        release.set()
        await asyncio.wait_for(asyncio.gather(*worker.tasks.values()), 10)
        assert jobs.calls == [{"try": 1}]
        assert await jobs.leftovers(jid) == []
    finally:
        await pool.aclose()


async def test_a_job_a_wake_up_names_is_picked_without_a_queue_read(
    redis_url: str, jobs: Jobs, redis: Redis
) -> None:
    """The wake-up carries the job id: the worker picks it at once (here its queue reads
    list nothing, so only the wake-up's job id can start the job)."""
    pool = connect_arq(redis_url, jobs.queue)
    started = asyncio.Event()

    async def work(ctx: dict[str, Any], payload: Any) -> None:
        jobs.calls.append({"id": ctx["job_id"]})
        started.set()

    worker = _worker(pool, jobs, work, burst=False, poll_delay=30)
    worker._queue_read_offset = 1_000_000  # every queue read comes back empty
    running = asyncio.create_task(worker.main())
    try:
        await asyncio.sleep(0.3)  # subscribed, first poll done
        jid = await jobs.enqueue()
        await redis.publish(jobs.queue + ":wake", b"batch:not-a-job")
        await redis.publish(jobs.queue + ":wake", jid)
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.wait_for(asyncio.gather(*worker.tasks.values()), 10)
        assert jobs.calls == [{"id": jid}]
        assert await jobs.leftovers(jid) == []
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await pool.aclose()


async def test_a_job_another_worker_is_running_is_not_tried_again_at_once(
    redis_url: str, jobs: Jobs, proxy: DroppingProxy
) -> None:
    """arq keeps running jobs at the queue's head, so every poll of a busy cluster lists
    the other workers' jobs: after one refused pick, no round trip for a while."""
    pool = connect_arq(redis_url, jobs.queue)
    other_pool = connect_arq(await proxy.start(), jobs.queue, timeout_s=0.3)
    release = asyncio.Event()

    async def work(ctx: dict[str, Any], payload: Any) -> None:
        jobs.calls.append({"id": ctx["job_id"]})
        await release.wait()

    try:
        jid = await jobs.enqueue()
        running = _worker(pool, jobs, work)
        await running.start_jobs([jid.encode()])
        await _wait_for(lambda: _true(len(jobs.calls) == 1), 5, "the job to start")
        other = _worker(other_pool, jobs, work)
        await other.start_jobs([jid.encode()])  # refused: the first worker runs it
        assert other.job_counter == 0
        proxy.drop_requests = True  # a pick now would time out
        await asyncio.wait_for(other.start_jobs([jid.encode()]), 5)
        assert other.job_counter == 0
        proxy.drop_requests = False
        release.set()
        await asyncio.wait_for(asyncio.gather(*running.tasks.values()), 10)
        assert jobs.calls == [{"id": jid}]
        assert await jobs.leftovers(jid) == []
    finally:
        await pool.aclose()
        await other_pool.aclose()


async def test_a_pick_reads_the_key_the_worker_names_and_hands_it_over_first(
    redis_url: str, jobs: Jobs, redis: Redis, keys: Keys
) -> None:
    """A turn's pick reads its run record in the same round trip (its start then needs
    no read of its own); the value is handed over before the job runs."""
    pool = connect_arq(redis_url, jobs.queue)
    record_key = keys.run("picked-run")
    await redis.set(record_key, b'{"run_id": "picked-run"}')
    handed: list[tuple[str, bytes]] = []

    async def work(ctx: dict[str, Any], payload: Any) -> None:
        jobs.calls.append({"id": ctx["job_id"], "handed": list(handed)})

    try:
        named, other = await jobs.enqueue(), await jobs.enqueue()
        worker = _worker(
            pool,
            jobs,
            work,
            pick_read=lambda jid: record_key if jid == named else keys.run("no-such-run"),
            picked_read=lambda jid, raw: handed.append((jid, raw)),
        )
        await worker.start_jobs([named.encode(), other.encode()])
        await asyncio.wait_for(asyncio.gather(*worker.tasks.values()), 10)
        expected = [(named, b'{"run_id": "picked-run"}')]
        assert handed == expected  # a key with no value hands nothing over
        assert sorted(jobs.calls, key=lambda c: c["id"] != named) == [
            {"id": named, "handed": expected},
            {"id": other, "handed": expected},
        ]
        assert [await jobs.leftovers(jid) for jid in (named, other)] == [[], []]
    finally:
        await pool.aclose()


class _CountingWorker(WakeableWorker):
    """Counts its passes that read the queue (arq's poll iteration)."""

    queue_reads = 0

    async def _poll_iteration(self) -> None:
        self.queue_reads += 1
        await super()._poll_iteration()


async def test_a_wake_up_naming_the_only_job_it_queued_costs_no_queue_read(
    redis_url: str, jobs: Jobs, keys: Keys
) -> None:
    """A submit's wake-up names its one job: picking it is all there is to do. An
    enqueue of several names its first and says there are more: the queue is read."""
    pool = connect_arq(redis_url, jobs.queue)
    queue = JobQueue(pool, keys)
    started: list[str] = []

    async def work(ctx: dict[str, Any], payload: Any) -> None:
        started.append(ctx["job_id"])

    worker = _CountingWorker(
        functions=[func(work, name="run_turn")],
        queue_name=keys.queue(),
        redis_pool=pool,
        wake_channel=keys.wake(),
        burst=False,
        handle_signals=False,
        poll_delay=30,
        job_serializer=jsonserial.dumps,
        job_deserializer=JobDecoder(),
    )
    running = asyncio.create_task(worker.main())
    requests = [
        RunRequest(run_id=f"wake-{uuid.uuid4().hex}", session_id="s1", agent="m:f")
        for _ in range(3)
    ]
    jobs.ids += [job_id(r.run_id, 1) for r in requests]
    try:
        await asyncio.sleep(0.3)  # subscribed, first poll done
        reads = worker.queue_reads
        await queue.enqueue(requests[0])
        await _wait_for(lambda: _true(len(started) == 1), 5, "the job to start")
        await asyncio.sleep(0.2)
        # The job's own end frees its slot, and that reads the queue once.
        assert worker.queue_reads - reads <= 1
        await run_scripts(pool, queue.enqueue_calls(requests[1:]))
        await _wait_for(lambda: _true(len(started) == 3), 5, "both jobs to start")
        assert started == [job_id(r.run_id, 1) for r in requests]
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await pool.aclose()


async def test_a_first_pick_creates_the_try_counter_with_arqs_ttl_and_a_later_one_keeps_it(
    redis_url: str, jobs: Jobs
) -> None:
    """A job's first try makes its counter with arq's TTL (a day); a later try counts on
    it without pushing that expiry back (arq refreshed it on every try)."""
    pool = connect_arq(redis_url, jobs.queue)
    seen: dict[str, tuple[int, int]] = {}

    async def work(ctx: dict[str, Any], payload: Any) -> None:
        ttl_ms = await pool.pttl(retry_key_prefix + ctx["job_id"])
        seen[ctx["job_id"]] = (ctx["job_try"], ttl_ms)

    try:
        fresh = await jobs.enqueue()
        retried = await jobs.enqueue()
        await pool.set(retry_key_prefix + retried, 1, ex=600)  # a dead worker's pick
        worker = _worker(pool, jobs, work, function_tries=2)
        await asyncio.wait_for(worker.async_run(), 10)
        fresh_try, fresh_ttl = seen[fresh]
        assert fresh_try == 1
        assert 88_000_000 < fresh_ttl <= 88_400_000
        retried_try, retried_ttl = seen[retried]
        assert retried_try == 2
        assert 0 < retried_ttl <= 600_000
        assert await jobs.leftovers(fresh) == await jobs.leftovers(retried) == []
    finally:
        await pool.aclose()


async def test_a_job_that_sends_its_own_finish_is_finished_once_and_keeps_no_result(
    redis_url: str, jobs: Jobs
) -> None:
    """`ctx[JOB_FINISH]`: a job may finish itself in a round trip of its own writes (a
    turn, with its run's end); once that is confirmed the worker keeps no result."""
    pool = connect_arq(redis_url, jobs.queue)

    async def work(ctx: dict[str, Any], payload: Any) -> dict[str, Any]:
        rider: Rider = ctx[JOB_FINISH]
        rider.sent = True
        for command in rider.commands:
            await pool.execute_command(*command)
        rider.confirmed = True
        jobs.calls.append({"left": await jobs.leftovers(ctx["job_id"])})
        return {"status": "completed"}

    try:
        jid = await jobs.enqueue()
        worker = _worker(pool, jobs, work)
        await asyncio.wait_for(worker.async_run(), 10)
        assert jobs.calls == [{"left": []}]  # finished before it returned
        assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
        assert not await pool.exists(result_key_prefix + jid)
    finally:
        await pool.aclose()


@pytest.mark.integration
async def test_a_pick_gives_a_try_counter_found_without_a_ttl_arqs_ttl(
    redis_url: str, keys: Keys
) -> None:
    """Every key has a TTL and Redis contents are untrusted: a try counter found without
    a TTL (a PERSIST, an older writer) gets one when the job is picked again."""
    pool = connect_arq(redis_url, keys.queue())
    jid = f"review-{uuid.uuid4().hex}"
    seen: list[int] = []

    async def work(ctx: dict[str, Any], payload: Any) -> None:
        seen.append(await pool.ttl(retry_key_prefix + ctx["job_id"]))

    class _Jobs:
        queue = keys.queue()

    try:
        now_ms = int(time.time() * 1000)
        body = {"t": None, "f": "work", "a": [{}], "k": {}, "et": now_ms}
        await pool.set(job_key_prefix + jid, json.dumps(body), px=600_000)
        await pool.zadd(keys.queue(), {jid: now_ms - 1})
        await pool.set(retry_key_prefix + jid, 1)  # no TTL
        worker = _worker(pool, _Jobs(), work, function_tries=5)  # type: ignore[arg-type]
        await asyncio.wait_for(worker.async_run(), 10)
        assert seen, "the job did not run"
        assert seen[0] > 0, f"the try counter has no TTL while its job runs (TTL {seen[0]})"
    finally:
        await drop_job_keys(pool, [jid])
        await pool.delete(keys.queue())
        await pool.aclose()
