"""`orchestrator bench`, section 6: one parent fans out to many forks and gathers them.

    ours       `bench.agents:bench_forker` submitted once; its first (scripted) LLM reply
               calls `bench_fan_out`, a tool that spawns N forks from code, 32 at a
               time, and gathers them. Each fork is its own arq job making exactly one
               scripted LLM call (`llm_ms` latency) and answering. The gather suspends the
               parent (freeing its slot); the last fork to end resumes it.
               Measured: client.submit -> run.result() returned, in this process.
    baseline   N no-op jobs through stock arq workers (the same number of processes,
               max_jobs = our concurrency, every other setting arq's default), enqueued
               one after another from this process. Measured: time.time() before the
               first enqueue -> time.time() recorded by the last job to run.

Both run with 1, then 2 worker processes, `concurrency` slots each, interleaved rep by
rep. The scripted model runs as its own process. CPU seconds (from /proc, and Redis'
INFO) of the workers, the scripted model and Redis over each measurement tell where the
time went. Keys live under `<prefix>:forks` and are deleted at the end, with the arq job
keys of every job the section created (never FLUSH*).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console

from orchestrator.aio import cancel_and_wait
from orchestrator.bench.agents import FORK_TASK, LLM_URL_ENV, TREE_DEPTH, TREE_TASK
from orchestrator.bench.agents import MODULE as AGENT_MODULE
from orchestrator.bench.children import ARQ_NOOP, connect_stock_arq
from orchestrator.bench.procs import (
    FIRST_START_TIMEOUT_S,
    GAP_S,
    BenchError,
    Child,
    delete_bench_keys,
    free_port,
    port_open,
    start_scripted_model,
)
from orchestrator.bench.report import Row, percentile
from orchestrator.client import connect
from orchestrator.errors import StoreError
from orchestrator.keys import BenchKeys
from orchestrator.runs import RunRecord, RunStatus, fork_run_id
from orchestrator.settings import Settings
from orchestrator.store.connection import connect as connect_raw
from orchestrator.store.connection import translate_errors
from orchestrator.store.queue import job_id

__all__ = [
    "FORK_AGENT",
    "FORK_LEGEND",
    "ROOT_MESSAGE",
    "ForkPlan",
    "fork_rows",
    "fork_script",
    "peak_overlap",
    "run_fork_bench",
]

FORK_AGENT = f"{AGENT_MODULE}:bench_forker"
ROOT_MESSAGE = "bench-fan-out"
TREE_ROOT = "bench-tree-root"
# How often the abort tree's records are read until all have ended (see `_abort_tree`).
_TREE_POLL_S = 0.05
GROUP = "6 forks"

FORK_LEGEND = (
    "[b]6 forks[/]: one `bench_forker` run whose tool spawns N forks from code, 32 at a "
    "time, and gathers them; each fork is its own arq job making one scripted LLM call "
    "(fixed latency) and answering. `submit→root result`: client.submit → run.result() "
    "returned (perf_counter, this process). Baseline: N no-op jobs through stock arq "
    "workers (same process count, max_jobs = our slots, arq defaults otherwise: 0.5 s "
    "poll), enqueued one by one from this process; first enqueue → the last job's own "
    "time.time(). forks/s = N / wall (higher is better). Median of the repetitions. "
    "`last fork started/ended`: fork records' started_at/finished_at - the root's "
    "submitted_at; `peak forks running`: most forks between started_at and finished_at at "
    "one moment. `spawn loop`: root started_at → last fork's submitted_at. `resume`: "
    "last fork ended → root finished_at (the resumed turn re-runs its tool: every spawn "
    "finds its fork, then the gather). `ideal` is arithmetic, N x latency / total slots, "
    "not a measurement. CPU rows: /proc CPU seconds of our worker processes (baseline: "
    "the arq workers) and of the whole Redis server (INFO cpu; other clients included) "
    "over the measurement, per fork (per job); `scripted model busy`: its process' CPU "
    "time / wall time (100 % = one core saturated, it is single-threaded).",
)


@dataclass(frozen=True)
class ForkPlan:
    """The fork section's sizes: `ForkPlan.full()` or `ForkPlan.quick()`."""

    forks: int
    concurrency: int
    llm_ms: int
    workers: tuple[int, ...]
    reps: int
    warmup_forks: int
    # The abort tree: every agent spawns `tree_width` forks, TREE_DEPTH levels deep. The p99
    # of 5 trees is in effect their max: the same code's figure moved from 114 to 172 ms
    # between runs on a 2-core machine, wider than the changes measured against it; 20
    # trees (about 30 s more) make the p50 and p99 steadier.
    tree_width: int = 3
    tree_reps: int = 20
    # The round-trip case: `latency_forks` forks on 2 workers, direct and through a proxy
    # adding `added_ms` each way between the workers and Redis.
    latency_forks: int = 300
    latency_reps: int = 2
    added_ms: float = 1.0

    @classmethod
    def full(cls) -> ForkPlan:
        return cls(forks=1000, concurrency=50, llm_ms=50, workers=(1, 2), reps=3, warmup_forks=100)

    @classmethod
    def quick(cls) -> ForkPlan:
        return cls(
            forks=50,
            concurrency=10,
            llm_ms=50,
            workers=(1, 2),
            reps=1,
            warmup_forks=10,
            tree_width=2,
            tree_reps=2,
            latency_forks=50,
            latency_reps=1,
        )

    @property
    def tree_agents(self) -> int:
        return sum(self.tree_width**level for level in range(TREE_DEPTH + 1))

    def ideal_s(self, workers: int) -> float:
        """N x latency / total slots: the wall time if slots were all that mattered."""
        return self.forks * self.llm_ms / 1000 / (workers * self.concurrency)

    @property
    def timeout_s(self) -> float:
        return 60.0 + self.forks * 0.25


def fork_script(plan: ForkPlan) -> dict[str, Any]:
    """The scripted model for this section. A fork's last user message ends with
    "Task: bench-leaf <i>"; the root's is "bench-fan-out <N>", which the root's first
    reply turns into `bench_fan_out(count=N)`. Only the forks' calls have latency."""
    return {
        "model": "scripted",
        "latency": {"first_token_ms": 0, "token_ms": 0},
        "rules": [
            {
                "name": "fork-leaf",
                "match": {"last_user_contains": f"Task: {FORK_TASK}"},
                "reply": {"content": "done"},
                "latency": {"first_token_ms": plan.llm_ms, "token_ms": 0},
            },
            {
                "name": "tree-leaf",
                "match": {"regex": rf"{TREE_TASK} {TREE_DEPTH} ", "last_role": "user"},
                "reply": {"content": " ".join(f"w{i % 1000}" for i in range(4000))},
                "latency": {"first_token_ms": 0, "token_ms": 5},
            },
            {
                "name": "tree-node",
                "match": {"regex": rf"{TREE_TASK} (\d) (\d+)", "last_role": "user"},
                "reply": {
                    "content": "Branching.",
                    "tool_calls": [
                        {
                            "name": "bench_tree",
                            "arguments": '{"level": {regex_1}, "width": {regex_2}}',
                        }
                    ],
                },
            },
            {
                "name": "tree-root",
                "match": {"regex": rf"{TREE_ROOT} (\d+)", "last_role": "user"},
                "reply": {
                    "content": "Branching.",
                    "tool_calls": [
                        {"name": "bench_tree", "arguments": '{"level": 0, "width": {regex_1}}'}
                    ],
                },
            },
            {
                "name": "tree-in",
                "match": {"last_user_contains": "bench-tree", "last_role": "tool"},
                "reply": {"content": "tree done"},
            },
            {
                "name": "fan-out",
                "match": {"regex": rf"{ROOT_MESSAGE} (\d+)", "last_role": "user"},
                "reply": {
                    "content": "Fanning out.",
                    "tool_calls": [{"name": "bench_fan_out", "arguments": '{"count": {regex_1}}'}],
                },
            },
            {
                "name": "fan-in",
                "match": {"last_user_contains": ROOT_MESSAGE, "last_role": "tool"},
                "reply": {"content": "gathered: {last_tool_result}"},
            },
        ],
        "fallback": {"content": "ok"},
    }


# -- samples ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Resources used so far: CPU seconds of our (or arq's) workers, of the scripted model,
    of Redis and of this process, and commands Redis processed. None: not measurable
    here (no /proc, INFO hidden)."""

    workers: float | None
    llm: float | None
    redis: float | None
    commands: float | None
    bench: float

    def since(self, before: Usage) -> Usage:
        def delta(now: float | None, then: float | None) -> float | None:
            return None if now is None or then is None else max(0.0, now - then)

        return Usage(
            delta(self.workers, before.workers),
            delta(self.llm, before.llm),
            delta(self.redis, before.redis),
            delta(self.commands, before.commands),
            self.bench - before.bench,
        )


@dataclass(frozen=True)
class ForkSample:
    """One fan-out. Times in seconds; the `*_s` from records use time.time()."""

    wall_s: float
    spawn_s: float  # root started_at -> last fork submitted_at
    started_s: float  # root submitted_at -> last fork started_at
    ended_s: float  # root submitted_at -> last fork finished_at
    resume_s: float  # last fork finished_at -> root finished_at
    workers_used: int
    on_root_worker: float  # share of the forks run by the process running the spawn loop
    peak_running: int  # most forks running at once (from their started/finished times)
    entries: int  # session stream entries (root + forks)
    usage: Usage


@dataclass(frozen=True)
class BaselineSample:
    wall_s: float
    usage: Usage


def _median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return percentile(known, 50) if known else None


def fork_rows(
    plan: ForkPlan, workers: int, ours: Sequence[ForkSample], base: Sequence[BaselineSample]
) -> list[Row]:
    """The printed figures of one worker count (medians over the repetitions)."""
    n = plan.forks
    group = f"{GROUP}, {workers} worker{'s' if workers > 1 else ''}"
    key = f"forks.w{workers}"
    wall = percentile([s.wall_s for s in ours], 50)
    base_wall = percentile([s.wall_s for s in base], 50)
    rows = [
        Row(group, f"{key}.wall", f"{n} forks: submit→root result", wall, base_wall, "s", n),
        Row(
            group,
            f"{key}.rate",
            "forks/s (baseline: no-op jobs/s)",
            n / wall,
            n / base_wall,
            "/s",
            n,
        ),
    ]
    timeline = (
        ("last_started", "submit→last fork started", [s.started_s for s in ours]),
        ("last_ended", "submit→last fork ended", [s.ended_s for s in ours]),
        ("spawn", "spawn loop: root started→last fork queued", [s.spawn_s for s in ours]),
        ("resume", "resume: last fork ended→root ended", [s.resume_s for s in ours]),
    )
    rows += [Row(group, f"{key}.{k}", m, percentile(v, 50), None, "s", n) for k, m, v in timeline]
    peak = percentile([float(s.peak_running) for s in ours], 50)
    label = f"peak forks running at once (of {workers * plan.concurrency} slots)"
    rows.append(Row(group, f"{key}.peak_running", label, peak, None, "forks", n))
    slots = f"{n}x{plan.llm_ms} ms/({workers}x{plan.concurrency} slots)"
    rows.append(
        Row(
            group, f"{key}.ideal", f"ideal {slots}: arithmetic", plan.ideal_s(workers), None, "s", n
        )
    )
    return rows + _usage_rows(group, key, n, ours, base)


def _usage_rows(
    group: str, key: str, n: int, ours: Sequence[ForkSample], base: Sequence[BaselineSample]
) -> list[Row]:
    """Resources per fork (per baseline job): where the time went."""
    rows: list[Row] = []
    for name, part, label, unit in (
        ("cpu_workers", "workers", "worker CPU per fork (per job)", "ms"),
        ("cpu_redis", "redis", "Redis CPU per fork (per job)", "ms"),
        ("redis_commands", "commands", "Redis commands per fork (per job)", "cmds"),
    ):
        scale = 1.0 if unit == "cmds" else 1000.0
        mine = _median(_per(getattr(s.usage, part), n / scale) for s in ours)
        theirs = _median(_per(getattr(s.usage, part), n / scale) for s in base)
        if mine is not None:
            rows.append(Row(group, f"{key}.{name}", label, mine, theirs, unit, n))
    busy = _median(_per(s.usage.llm, s.wall_s / 100.0) for s in ours)
    if busy is not None:
        label = "scripted model busy (of one core)"
        rows.append(Row(group, f"{key}.llm_busy", label, busy, None, "%", n))
    return rows


def _per(total: float | None, count: float) -> float | None:
    return None if total is None else total / count


# -- resource accounting ---------------------------------------------------------------


def _process_cpu_s(pids: Iterable[int]) -> float | None:
    """utime + stime of these processes (Linux /proc), or None where unavailable."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


async def _redis_usage(raw: Any) -> tuple[float | None, float | None]:
    """(CPU seconds, commands processed) of the whole Redis server so far."""
    try:
        async with translate_errors("INFO"):
            cpu = await raw.info("cpu")
            stats = await raw.info("stats")
        seconds = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
        return seconds, float(stats["total_commands_processed"])
    except (StoreError, KeyError, ValueError):  # INFO hidden or unfamiliar: rows left out
        return None, None


# -- the section -------------------------------------------------------------------------


@dataclass
class _Procs:
    llm: Child | None = None
    ours: list[Child] = field(default_factory=list)
    arq: list[Child] = field(default_factory=list)
    proxy: Child | None = None

    def all(self) -> list[Child]:
        return [c for c in (self.llm, self.proxy, *self.ours, *self.arq) if c is not None]


class ForkBench:
    """Starts the section's processes, measures, cleans up. One instance per run."""

    def __init__(
        self, url: str, names: BenchKeys, plan: ForkPlan, console: Console, logdir: Path
    ) -> None:
        self.url = url
        self.plan = plan
        self.console = console
        self.logdir = logdir
        self.names = names
        self.keys = names.ours
        self.arq_queue = names.arq_queue()
        self.arq_done = names.arq_done()
        self.token = uuid.uuid4().hex[:12]
        self.job_ids: set[str] = set()
        self.procs = _Procs()
        self.rng = random.Random()
        self.env = dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            ORCHESTRATOR_MAX_FORKS_PER_AGENT=str(max(plan.forks, plan.warmup_forks)),
        )
        self._conns: dict[str, Any] = {}
        self._batches = 0

    # -- processes ----------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> Child:
        return Child(name, [sys.executable, *argv], self.logdir, self.env)

    def start_llm(self) -> None:
        self.procs.llm, url = start_scripted_model(
            "fork-mock-llm", fork_script(self.plan), self.logdir, self.env
        )
        self.env[LLM_URL_ENV] = url

    def _add_workers(self, count: int, url: str | None = None) -> None:
        redis = ["--redis", url or self.url]
        while len(self.procs.ours) < count:
            i = len(self.procs.ours) + 1
            argv = [
                *("-m", "orchestrator.cli", "worker", *redis, "--prefix", self.keys.prefix),
                *("--agents", AGENT_MODULE, "--concurrency", str(self.plan.concurrency)),
            ]
            self.procs.ours.append(self._spawn(f"fork-worker-{i}", argv))
        while len(self.procs.arq) < count:
            i = len(self.procs.arq) + 1
            argv = [
                *("-m", "orchestrator.bench", "arq-worker", *redis, "--queue", self.arq_queue),
                *("--max-jobs", str(self.plan.concurrency)),
            ]
            self.procs.arq.append(self._spawn(f"fork-arq-worker-{i}", argv))

    def stop(self) -> None:
        for child in reversed(self.procs.all()):
            child.stop()

    def check(self) -> None:
        for child in self.procs.all():
            child.check()

    # -- connections ----------------------------------------------------------------------

    async def connect(self) -> None:
        settings = Settings(redis_url=self.url, key_prefix=self.keys.prefix)
        self._conns = {
            "client": await connect(self.url, settings=settings),
            "arq": await connect_stock_arq(self.url),
            "raw": connect_raw(self.url),
        }

    async def disconnect(self) -> None:
        conns, self._conns = self._conns, {}
        for name, conn in conns.items():
            with contextlib.suppress(Exception):
                await (conn.close() if name == "client" else conn.aclose())

    @property
    def client(self) -> Any:
        return self._conns["client"]

    @property
    def raw(self) -> Any:
        return self._conns["raw"]

    async def _usage(self, ours: bool) -> Usage:
        workers = self.procs.ours if ours else self.procs.arq
        llm = self.procs.llm
        redis_cpu, commands = await _redis_usage(self.raw)
        return Usage(
            workers=_process_cpu_s(c.proc.pid for c in workers),
            llm=_process_cpu_s([llm.proc.pid]) if llm is not None else None,
            redis=redis_cpu,
            commands=commands,
            bench=time.process_time(),
        )

    # -- readiness ------------------------------------------------------------------------

    async def _scale_to(self, workers: int) -> None:
        """`workers` of ours and of arq's running, each seen working, and warmed up."""
        self._add_workers(workers)
        deadline = time.monotonic() + FIRST_START_TIMEOUT_S
        while len(await self.client.workers.list()) < workers:
            self.check()
            if time.monotonic() > deadline:
                raise BenchError(f"{workers} fork worker(s) did not register in time")
            await asyncio.sleep(0.1)
        await self._arq_seen(workers, deadline)
        await self._fan_out(self.plan.warmup_forks)
        await self._arq_batch(self.plan.warmup_forks)

    async def _arq_seen(self, workers: int, deadline: float) -> None:
        """Single jobs until each arq worker process has run one (they poll every 0.5 s)."""
        key = self.names.arq_warm()
        pids: set[int] = set()
        while len(pids) < workers:
            self.check()
            if time.monotonic() > deadline:
                raise BenchError(f"only {len(pids)} of {workers} arq workers ran a job")
            jid = self._arq_job_id("warm", len(self.job_ids))
            await self._conns["arq"].enqueue_job(
                ARQ_NOOP, key, jid, _job_id=jid, _queue_name=self.arq_queue
            )
            reply = await self.raw.blpop([key], timeout=5)
            if reply is not None:
                pids.add(int(json.loads(reply[1])["pid"]))

    def _arq_job_id(self, kind: str, i: int) -> str:
        jid = f"{self.token}-{kind}-{i}"
        self.job_ids.add(jid)
        return jid

    # -- ours ---------------------------------------------------------------------------

    async def _fan_out(self, count: int) -> ForkSample:
        before = await self._usage(ours=True)
        t0 = time.perf_counter()
        run = await self.client.submit(FORK_AGENT, f"{ROOT_MESSAGE} {count}", history=[])
        spawner = asyncio.create_task(_first_worker(run))
        try:
            result = await run.result(timeout=self.plan.timeout_s)
        except TimeoutError as exc:
            self.check()
            raise BenchError(f"fan-out {run.run_id} did not end: {exc}") from None
        finally:
            await cancel_and_wait(spawner)  # long done unless the root never started
        wall = time.perf_counter() - t0
        usage = (await self._usage(ours=True)).since(before)
        root = await run.status()
        ids = [fork_run_id(run.run_id, f"fork_{i}") for i in range(1, count + 1)]
        forks = await self.client.runs.get_many(ids)
        self._remember_jobs([root, *forks.values()])
        if not result.ok:
            self.check()
            raise BenchError(f"fan-out {run.run_id} ended {result.status.value}: {result.error}")
        done = [f for f in forks.values() if f.status is RunStatus.COMPLETED]
        if len(done) != count:
            raise BenchError(f"fan-out {run.run_id}: {len(done)} of {count} forks completed")
        entries = int(await self.raw.xlen(self.keys.events(run.session_id)))
        spawned_on = None if spawner.cancelled() else spawner.result()
        return _fork_sample(wall, root, done, entries, usage, spawned_on)

    def _remember_jobs(self, records: Iterable[RunRecord]) -> None:
        for record in records:
            for attempt in range(1, record.attempt + 1):
                for segment in range(record.segment + 2):
                    self.job_ids.add(job_id(record.run_id, attempt, segment))

    # -- baseline -------------------------------------------------------------------------

    async def _arq_batch(self, count: int) -> BaselineSample:
        self._batches += 1
        jids = [self._arq_job_id(f"b{self._batches}", i) for i in range(count)]
        await self.raw.delete(self.arq_done)
        enqueue = self._conns["arq"].enqueue_job
        before = await self._usage(ours=False)
        sent = time.time()
        for jid in jids:
            await enqueue(ARQ_NOOP, self.arq_done, jid, _job_id=jid, _queue_name=self.arq_queue)
        deadline = time.monotonic() + self.plan.timeout_s
        while await self.raw.llen(self.arq_done) < count:
            if time.monotonic() > deadline:
                self.check()
                raise BenchError(
                    f"the arq baseline ran {await self.raw.llen(self.arq_done)}/{count}"
                )
            await asyncio.sleep(0.01)
        usage = (await self._usage(ours=False)).since(before)
        starts = [json.loads(r)["start"] for r in await self.raw.lrange(self.arq_done, 0, -1)]
        return BaselineSample(max(starts) - sent, usage)

    # -- all ----------------------------------------------------------------------------

    async def measure(self) -> list[Row]:
        await self.connect()
        try:
            rows: list[Row] = []
            for workers in self.plan.workers:
                rows.extend(await self._measure_with(workers))
            rows.extend(await self._measure_tree())
            rows.extend(await self._measure_latency())
            return rows
        finally:
            await self.disconnect()

    # -- the abort tree ---------------------------------------------------------------------

    async def _measure_tree(self) -> list[Row]:
        plan = self.plan
        self.console.print(
            f"[dim]… 6 forks: abort of a depth-{TREE_DEPTH} tree, {plan.tree_width} forks per "
            f"agent ({plan.tree_agents} agents), on {len(self.procs.ours)} worker(s)[/]",
            highlight=False,
        )
        t0 = time.perf_counter()
        whole: list[float] = []
        each: list[float] = []
        for _ in range(plan.tree_reps):
            ends = await self._abort_tree()
            whole.append(max(ends))
            each.extend(ends)
            await asyncio.sleep(self.rng.uniform(*GAP_S))
        self.console.print(f"[dim]  done in {time.perf_counter() - t0:.1f} s[/]", highlight=False)
        group = f"6 forks, abort of a depth-{TREE_DEPTH} tree"
        n = plan.tree_agents
        label = f"abort→every agent ended ({n} agents)"
        rows = []
        for q in (50, 99):
            rows.append(
                Row(
                    group,
                    f"forks.tree_abort.all_p{q}",
                    f"{label} p{q}",
                    percentile(whole, q) * 1000,
                    None,
                    "ms",
                    len(whole),
                )
            )
        for q in (50, 99):
            rows.append(
                Row(
                    group,
                    f"forks.tree_abort.each_p{q}",
                    f"abort→an agent ended p{q}",
                    percentile(each, q) * 1000,
                    None,
                    "ms",
                    len(each),
                )
            )
        return rows

    async def _abort_tree(self) -> list[float]:
        """Submit a tree, abort it once every leaf runs: each agent's end - the abort."""
        plan = self.plan
        run = await self.client.submit(FORK_AGENT, f"{TREE_ROOT} {plan.tree_width}", history=[])
        ids = [fork_run_id(run.run_id, f"fork_{i}") for i in range(1, plan.tree_agents)]
        leaves = plan.tree_width**TREE_DEPTH
        deadline = time.monotonic() + plan.timeout_s
        while True:
            forks = await self.client.runs.get_many(ids)
            ended = [f.run_id for f in forks.values() if f.status.terminal]
            if ended:
                raise BenchError(f"abort tree {run.run_id}: {ended[0]} ended before the abort")
            running = [
                f
                for f in forks.values()
                if f.fork is not None
                and f.fork.depth == TREE_DEPTH
                and f.status is RunStatus.RUNNING
            ]
            if len(running) == leaves:
                break
            if time.monotonic() > deadline:
                self.check()
                raise BenchError(f"abort tree {run.run_id}: {len(running)}/{leaves} leaves ran")
            await asyncio.sleep(0.02)
        await asyncio.sleep(self.rng.uniform(0.05, 0.3))
        aborted_at = time.time()
        await run.abort("bench")
        while True:
            # The figures are the records' own end times, so how often this looks only
            # decides when the rep is over; it looks every 50 ms, not every 5: reading and
            # decoding the tree's records took this process some 2.5 ms of CPU a time, a
            # third of a core taken from the workers it measures on a small machine.
            await asyncio.sleep(_TREE_POLL_S)
            records = await self.client.runs.get_many([run.run_id, *ids])
            if len(records) == plan.tree_agents and all(
                r.status.terminal for r in records.values()
            ):
                break
            if time.monotonic() > deadline:
                self.check()
                raise BenchError(f"abort tree {run.run_id} did not end")
        self._remember_jobs(records.values())
        wrong = [r.run_id for r in records.values() if r.status is not RunStatus.ABORTED]
        if wrong:
            raise BenchError(f"abort tree {run.run_id}: {wrong[0]} did not end aborted")
        return [(r.finished_at or aborted_at) - aborted_at for r in records.values()]

    # -- added latency ----------------------------------------------------------------------

    async def _measure_latency(self) -> list[Row]:
        plan = self.plan
        workers = max(plan.workers)
        n = plan.latency_forks
        self.console.print(
            f"[dim]… 6 forks: {n} forks on {workers} workers, direct, then with "
            f"{plan.added_ms:g} ms added each way between the workers and Redis[/]",
            highlight=False,
        )
        t0 = time.perf_counter()
        direct = [(await self._fan_out(n)).wall_s for _ in range(plan.latency_reps)]
        proxy_port = free_port()
        target = urlsplit(self.url)
        argv = [
            *("-m", "orchestrator.bench", "delay-proxy", "--listen", str(proxy_port)),
            *("--target", f"{target.hostname or '127.0.0.1'}:{target.port or 6379}"),
            *("--delay-ms", str(plan.added_ms)),
        ]
        self.procs.proxy = self._spawn("delay-proxy", argv)
        wait_until = time.monotonic() + 30
        while not port_open(proxy_port):
            self.procs.proxy.check()
            if time.monotonic() > wait_until:
                raise BenchError("the delaying proxy did not start")
            await asyncio.sleep(0.05)
        proxied_url = target._replace(netloc=f"127.0.0.1:{proxy_port}").geturl()
        old, self.procs.ours = self.procs.ours, []
        for child in old:
            await asyncio.to_thread(child.stop)
        self._add_workers(workers, proxied_url)
        deadline = time.monotonic() + FIRST_START_TIMEOUT_S
        while len(await self.client.workers.list()) != workers:
            self.check()
            if time.monotonic() > deadline:
                raise BenchError("the workers behind the delaying proxy did not register")
            await asyncio.sleep(0.1)
        await self._fan_out(plan.warmup_forks)
        delayed = [(await self._fan_out(n)).wall_s for _ in range(plan.latency_reps)]
        self.console.print(f"[dim]  done in {time.perf_counter() - t0:.1f} s[/]", highlight=False)
        group = "6 forks, round trips"
        label = f"{n} forks, {workers} workers, +{plan.added_ms:g} ms each way (base: direct)"
        return [
            Row(
                group,
                "forks.latency.wall",
                label,
                percentile(delayed, 50),
                percentile(direct, 50),
                "s",
                n,
            )
        ]

    async def _measure_with(self, workers: int) -> list[Row]:
        t0 = time.perf_counter()
        self.console.print(
            f"[dim]… 6 forks: {workers} worker process(es) x {self.plan.concurrency} slots "
            f"(and {workers} stock arq worker(s), max_jobs {self.plan.concurrency})[/]",
            highlight=False,
        )
        await self._scale_to(workers)
        ours: list[ForkSample] = []
        base: list[BaselineSample] = []
        # Interleaved, so drifting machine noise hits ours and the baseline alike.
        for _ in range(self.plan.reps):
            ours.append(await self._fan_out(self.plan.forks))
            await asyncio.sleep(self.rng.uniform(*GAP_S))
            base.append(await self._arq_batch(self.plan.forks))
        self._report(ours, time.perf_counter() - t0)
        return fork_rows(self.plan, workers, ours, base)

    def _report(self, ours: Sequence[ForkSample], elapsed: float) -> None:
        used = sorted({s.workers_used for s in ours})
        on_root = percentile([100.0 * s.on_root_worker for s in ours], 50)
        per_fork = percentile([s.entries / self.plan.forks for s in ours], 50)
        bench_cpu = percentile([s.usage.bench for s in ours], 50)
        self.console.print(
            f"[dim]  done in {elapsed:.1f} s; forks ran on {used} worker process(es), "
            f"{on_root:.0f} % on the one running the spawn loop; "
            f"{per_fork:.1f} stream entries per fork; this process used {bench_cpu:.2f} s "
            "CPU per fan-out[/]",
            highlight=False,
        )

    async def cleanup(self) -> int:
        """Delete every key under the section's prefix and the arq keys of its jobs."""
        return await delete_bench_keys(self.url, self.names, self.job_ids)


async def _first_worker(run: Any) -> str | None:
    """The worker that runs the root's first segment (its spawn loop): its record names it
    from the start of that segment until a later segment overwrites it."""
    while True:
        worker = (await run.status()).worker_id
        if worker is not None:
            return str(worker)
        await asyncio.sleep(0.005)


def _fork_sample(
    wall: float,
    root: RunRecord,
    forks: Sequence[RunRecord],
    entries: int,
    usage: Usage,
    spawned_on: str | None,
) -> ForkSample:
    submitted = root.submitted_at
    last_start = max(f.started_at or submitted for f in forks)
    last_end = max(f.finished_at or submitted for f in forks)
    return ForkSample(
        wall_s=wall,
        spawn_s=max(f.submitted_at for f in forks) - (root.started_at or submitted),
        started_s=last_start - submitted,
        ended_s=last_end - submitted,
        resume_s=(root.finished_at or last_end) - last_end,
        workers_used=len({f.worker_id for f in forks}),
        on_root_worker=sum(1 for f in forks if f.worker_id == spawned_on) / len(forks),
        peak_running=peak_overlap([(f.started_at, f.finished_at) for f in forks]),
        entries=entries,
        usage=usage,
    )


def peak_overlap(intervals: Iterable[tuple[float | None, float | None]]) -> int:
    """The most intervals open at one moment (an end at t closes before a start at t)."""
    moments = sorted(
        (t, step)
        for start, end in intervals
        if start is not None and end is not None
        for t, step in ((start, 1), (end, -1))
    )
    peak = running = 0
    for _, step in moments:
        running += step
        peak = max(peak, running)
    return peak


def run_fork_bench(url: str, prefix: str, quick: bool, console: Console, logdir: Path) -> list[Row]:
    """Section 6 of `orchestrator bench`: start its processes, measure, clean up.
    Raises `BenchError` if something could not be measured."""
    plan = ForkPlan.quick() if quick else ForkPlan.full()
    console.print(
        f"[bold]forks:[/] {plan.forks} forks x one scripted LLM call of {plan.llm_ms} ms; "
        f"{plan.concurrency} slots per worker; workers {list(plan.workers)}; "
        f"{plan.reps} repetition(s); max_forks_per_agent={max(plan.forks, plan.warmup_forks)}"
    )
    bench = ForkBench(url, BenchKeys(prefix).forks, plan, console, logdir)
    try:
        bench.start_llm()
        return asyncio.run(bench.measure())
    finally:
        bench.stop()
        deleted = asyncio.run(bench.cleanup())
        console.print(f"[dim]cleanup: deleted {deleted} keys of the fork section[/]")
