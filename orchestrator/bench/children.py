"""What the bench's helper processes run: `python -m orchestrator.bench ROLE ...`.

    noop-worker   a real `orchestrator worker` whose job function is a no-op
    arq-worker    a stock arq worker (the baseline), running a no-op job
    xadd-writer   raw XADDs of timestamped payloads (the delivery baseline)
    delay-proxy   a TCP proxy adding a fixed delay each way (workers -> Redis latency)

The baselines are stock arq and raw redis-py by definition, so this module (and only
this one in the bench) imports arq and redis itself; `connect_stock_arq` is the stock
arq client the measuring process enqueues the baseline's jobs with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import func, run_worker

from orchestrator.bench.agents import MODULE as AGENT_MODULE
from orchestrator.bench.proxy import serve_delay_proxy
from orchestrator.settings import Settings
from orchestrator.store.queue import RUN_TURN
from workers.worker import create_worker

if TYPE_CHECKING:
    from arq.cron import CronJob
    from arq.typing import StartupShutdown, WorkerCoroutine
    from arq.worker import Function

__all__ = ["ARQ_NOOP", "STARTS_CTX", "connect_stock_arq", "main"]

ARQ_NOOP = "bench_arq_noop"
STARTS_CTX = "bench_starts_key"


async def connect_stock_arq(url: str) -> ArqRedis:
    """A stock arq client (arq's defaults) to enqueue the baseline's jobs with."""
    return await create_pool(RedisSettings.from_dsn(url))


async def _noop_turn(ctx: dict[str, Any], payload: Any) -> None:
    """Replaces run_turn on the bench's `orchestrator worker`: records when it started."""
    start = time.time()
    run_id = payload.get("run_id") if isinstance(payload, dict) else None
    await ctx["redis"].rpush(ctx[STARTS_CTX], json.dumps({"id": run_id, "start": start}))


async def _arq_noop(ctx: dict[str, Any], key: str, job: str) -> None:
    """The stock arq worker's job: records when it started (and on which process)."""
    start = time.time()
    await ctx["redis"].rpush(key, json.dumps({"id": job, "start": start, "pid": os.getpid()}))


class ArqBaselineSettings:
    """A stock arq WorkerSettings: arq's defaults except the function list (and, given on
    the command line, the Redis URL and a queue name under the bench's prefix)."""

    functions: Sequence[WorkerCoroutine | Function] = [func(_arq_noop, name=ARQ_NOOP)]
    cron_jobs: Sequence[CronJob] | None = None
    on_startup: StartupShutdown | None = None
    on_shutdown: StartupShutdown | None = None


async def _serve_noop_worker(url: str, prefix: str, starts: str) -> None:
    settings = Settings(redis_url=url, key_prefix=prefix)
    worker = await create_worker(settings, [AGENT_MODULE])
    # The real worker (wake-ups, heartbeat, abort watcher, reaper): only the job is a no-op.
    worker.functions[RUN_TURN] = func(_noop_turn, name=RUN_TURN, max_tries=1)
    worker.ctx[STARTS_CTX] = starts
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        pass
    finally:
        await worker.close()


def _serve_arq_worker(url: str, queue: str, max_jobs: int | None = None) -> None:
    extra: dict[str, Any] = {} if max_jobs is None else {"max_jobs": max_jobs}
    run_worker(
        ArqBaselineSettings, redis_settings=RedisSettings.from_dsn(url), queue_name=queue, **extra
    )


def _write_raw(url: str, stream: str, count: int, interval_ms: float, pad: int) -> None:
    """XADD `count` timestamped payloads one at a time, `interval_ms` apart, then an end."""
    client = redis.Redis.from_url(url)
    filler = "x" * pad
    try:
        for i in range(count):
            payload = json.dumps({"i": i, "ts": time.time(), "pad": filler})
            client.xadd(stream, {"data": payload})
            time.sleep(interval_ms / 1000)
        client.xadd(stream, {"end": "1"})
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """The bench's helper processes: `python -m orchestrator.bench ROLE ...`."""
    parser = argparse.ArgumentParser(prog="python -m orchestrator.bench")
    sub = parser.add_subparsers(dest="role", required=True)
    p = sub.add_parser("noop-worker")
    p.add_argument("--redis", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--starts", required=True)
    p = sub.add_parser("arq-worker")
    p.add_argument("--redis", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--max-jobs", type=int, help="arq's max_jobs (default: arq's)")
    p = sub.add_parser("xadd-writer")
    p.add_argument("--redis", required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--interval-ms", type=float, required=True)
    p.add_argument("--pad", type=int, default=0)
    p = sub.add_parser("delay-proxy")
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--target", required=True, help="host:port")
    p.add_argument("--delay-ms", type=float, required=True)
    args = parser.parse_args(argv)
    if args.role == "noop-worker":
        asyncio.run(_serve_noop_worker(args.redis, args.prefix, args.starts))
    elif args.role == "arq-worker":
        _serve_arq_worker(args.redis, args.queue, args.max_jobs)
    elif args.role == "delay-proxy":
        serve_delay_proxy(args.listen, args.target, args.delay_ms)
    else:
        _write_raw(args.redis, args.stream, args.count, args.interval_ms, args.pad)
    return 0
