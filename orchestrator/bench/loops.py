"""`orchestrator bench`, section 7: many independent agent loops.

Each loop is one `bench.agents:bench_loop` call: a streamed model call that asks for
`bench_lookup`, the tool, and a second streamed model call that answers (each model call
`llm_ms` before its first token). Measured three ways, on the same scripted model (its own
process) in the same run:

    in-process   N loops started at once in this process through `llm_chat` (events on);
                 wall time and this process' CPU time per loop
    2 workers    N runs submitted at once to 2 `orchestrator worker` processes
                 (`concurrency` slots each); submit of the first → the last result
    lm-deluge    `LLMClient.process_agent_loops_async` on the same N prompts with the same
                 tool, in this process (the baseline of both; `pip install
                 'orchestrator[bench]'`). Without it the rows say "lm-deluge not installed".
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from orchestrator.bench.agents import LLM_URL_ENV, LOOP_TASK
from orchestrator.bench.agents import MODULE as AGENT_MODULE
from orchestrator.bench.procs import (
    FIRST_START_TIMEOUT_S,
    BenchError,
    Child,
    delete_bench_keys,
    start_scripted_model,
)
from orchestrator.bench.report import Row
from orchestrator.client import connect
from orchestrator.keys import BenchKeys
from orchestrator.settings import Settings
from orchestrator.store.queue import job_id

__all__ = ["LOOP_LEGEND", "LoopPlan", "loop_script", "run_loop_bench"]

AGENT = f"{AGENT_MODULE}:bench_loop"
GROUP = "7 agent loops"
DELUGE_MISSING = "lm-deluge not installed"
_DELUGE_KEY_ENV = "ORCHESTRATOR_BENCH_DELUGE_KEY"

LOOP_LEGEND = (
    "[b]7 agent loops[/]: N independent loops of 2 streamed model calls + 1 tool "
    "(`bench_loop`; the scripted model waits `llm_ms` before each answer). In-process: N "
    "`llm_chat` calls started at once in this process (events on); CPU = this process' "
    "CPU time / N. 2 workers: N runs submitted at once, first submit → last "
    "run.result(); CPU = the workers' CPU time / N. Baseline: lm-deluge's "
    "`process_agent_loops_async` on the same N prompts and tool, in this process, "
    "max_concurrent_requests = N. A loop set that did not finish within the timeout "
    "shows the timeout as its time.",
)


@dataclass(frozen=True)
class LoopPlan:
    loops: int
    levels: tuple[int, ...]  # how many loops at once, in-process
    llm_ms: int
    workers: int
    concurrency: int
    timeout_s: float

    @classmethod
    def full(cls) -> LoopPlan:
        return cls(
            loops=1000,
            levels=(100, 300, 1000),
            llm_ms=50,
            workers=2,
            concurrency=100,
            timeout_s=60.0,
        )

    @classmethod
    def quick(cls) -> LoopPlan:
        return cls(loops=100, levels=(10, 100), llm_ms=50, workers=2, concurrency=50, timeout_s=30)


def loop_script(plan: LoopPlan) -> dict[str, Any]:
    """A user message with "bench-loop" gets a `bench_lookup` call, its tool result the
    answer; both after `llm_ms`."""
    latency = {"first_token_ms": plan.llm_ms, "token_ms": 0}
    return {
        "model": "scripted",
        "latency": latency,
        "rules": [
            {
                "name": "loop-call",
                "match": {"last_user_contains": LOOP_TASK, "last_role": "user"},
                "reply": {
                    "content": "Looking it up.",
                    "tool_calls": [{"name": "bench_lookup", "arguments": {"key": "k"}}],
                },
            },
            {
                "name": "loop-answer",
                "match": {"last_role": "tool"},
                "reply": {"content": "It is {last_tool_result}."},
            },
        ],
        "fallback": {"content": "ok"},
    }


@dataclass(frozen=True)
class LoopSample:
    wall_s: float
    cpu_s: float | None
    done: bool


def _process_cpu_s(pids: Sequence[int]) -> float | None:
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


async def _timed(
    work: Callable[[], Awaitable[object]], timeout_s: float, cpu: Callable[[], float | None]
) -> LoopSample:
    before = cpu()
    t0 = time.perf_counter()
    done = True
    try:
        async with asyncio.timeout(timeout_s):
            await work()
    except TimeoutError:
        done = False
    wall = time.perf_counter() - t0
    after = cpu()
    spent = None if before is None or after is None else after - before
    return LoopSample(wall, spent, done)


class LoopBench:
    def __init__(
        self, url: str, names: BenchKeys, plan: LoopPlan, console: Console, logdir: Path
    ) -> None:
        self.url = url
        self.names = names
        self.keys = names.ours
        self.plan = plan
        self.console = console
        self.logdir = logdir
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.llm: Child | None = None
        self.workers: list[Child] = []
        self.llm_url = ""
        self.job_ids: set[str] = set()

    def _spawn(self, name: str, argv: list[str]) -> Child:
        return Child(name, [sys.executable, *argv], self.logdir, self.env)

    def start_llm(self) -> None:
        self.llm, self.llm_url = start_scripted_model(
            "loop-mock-llm", loop_script(self.plan), self.logdir, self.env
        )
        self.env[LLM_URL_ENV] = self.llm_url

    def stop(self) -> None:
        for child in reversed([*self.workers, *([self.llm] if self.llm else [])]):
            child.stop()

    # -- in-process ---------------------------------------------------------------------

    def _agent(self) -> Callable[..., Any]:
        os.environ[LLM_URL_ENV] = self.llm_url
        module = importlib.import_module(AGENT_MODULE)
        if module.llm.base_url != self.llm_url:
            module = importlib.reload(module)
        agent: Callable[..., Any] = module.bench_loop
        return agent

    async def _ours_local(self, count: int) -> LoopSample:
        agent = self._agent()

        async def one(i: int) -> None:
            async for _ in agent(f"{LOOP_TASK} {i}"):
                pass

        async def all_loops() -> None:
            await asyncio.gather(*(one(i) for i in range(count)))

        return await _timed(all_loops, self.plan.timeout_s, time.process_time)

    # -- lm-deluge ----------------------------------------------------------------------

    async def _deluge(self, count: int) -> LoopSample | None:
        try:
            deluge = importlib.import_module("lm_deluge")
            models = importlib.import_module("lm_deluge.models")
        except ImportError:
            return None
        os.environ.setdefault(_DELUGE_KEY_ENV, "scripted-no-key-needed")
        model_id = "orchestrator-bench-scripted"
        models.register_model(
            id=model_id,
            name="scripted",
            api_base=self.llm_url,
            api_key_env_var=_DELUGE_KEY_ENV,
            api_spec="openai",
        )
        client = deluge.LLMClient(
            model_id,
            max_requests_per_minute=10_000_000,
            max_tokens_per_minute=1_000_000_000,
            max_concurrent_requests=count,
            request_timeout=int(self.plan.timeout_s),
            progress="manual",
        )

        async def bench_lookup(key: str) -> str:
            """Return a value for the key."""
            return f"value-of-{key}"

        tool = deluge.Tool.from_function(bench_lookup)
        prompts = [f"{LOOP_TASK} {i}" for i in range(count)]

        async def all_loops() -> None:
            await client.process_agent_loops_async(
                prompts,
                tools=[tool],
                max_rounds=5,
                max_concurrent_agents=count,
                show_progress=False,
            )

        return await _timed(all_loops, self.plan.timeout_s, time.process_time)

    # -- workers --------------------------------------------------------------------------

    async def _ours_workers(self) -> LoopSample:
        plan = self.plan
        for i in range(plan.workers):
            argv = [
                *("-m", "orchestrator.cli", "worker", "--redis", self.url),
                *("--prefix", self.keys.prefix, "--agents", AGENT_MODULE),
                *("--concurrency", str(plan.concurrency)),
            ]
            self.workers.append(self._spawn(f"loop-worker-{i + 1}", argv))
        settings = Settings(redis_url=self.url, key_prefix=self.keys.prefix)
        client = await connect(self.url, settings=settings)
        try:
            deadline = time.monotonic() + FIRST_START_TIMEOUT_S
            while len(await client.workers.list()) < plan.workers:
                for child in self.workers:
                    child.check()
                if time.monotonic() > deadline:
                    raise BenchError("the loop workers did not register in time")
                await asyncio.sleep(0.1)
            await self._submit_all(client, min(plan.loops, 2 * plan.concurrency))  # warm up
            pids = [c.proc.pid for c in self.workers]
            return await _timed(
                lambda: self._submit_all(client, plan.loops),
                plan.timeout_s,
                lambda: _process_cpu_s(pids),
            )
        finally:
            with contextlib.suppress(Exception):
                await client.close()

    async def _submit_all(self, client: Any, count: int) -> None:
        async def one(i: int) -> None:
            run = await client.submit(AGENT, f"{LOOP_TASK} {i}")
            self.job_ids.add(job_id(run.run_id, 1))
            result = await run.result(timeout=self.plan.timeout_s)
            if not result.ok:
                raise BenchError(f"loop run {run.run_id} ended {result.status.value}")

        await asyncio.gather(*(one(i) for i in range(count)))

    # -- all ------------------------------------------------------------------------------

    async def measure(self) -> list[Row]:
        plan = self.plan
        rows: list[Row] = []
        await self._ours_local(min(10, plan.loops))  # warm up: imports, connections
        for count in plan.levels:
            self.console.print(f"[dim]… 7 loops: {count} at once, in-process[/]", highlight=False)
            ours = await self._ours_local(count)
            base = await self._deluge(count)
            rows += _rows(f"inproc.{count}", f"{count} loops in-process", count, ours, base)
        self.console.print(
            f"[dim]… 7 loops: {plan.loops} runs on {plan.workers} workers x "
            f"{plan.concurrency} slots[/]",
            highlight=False,
        )
        ours = await self._ours_workers()
        base = await self._deluge(plan.loops)
        label = f"{plan.loops} loops, {plan.workers} workers x {plan.concurrency} slots"
        rows += _rows(f"workers.{plan.loops}", label, plan.loops, ours, base)
        return rows

    async def cleanup(self) -> int:
        return await delete_bench_keys(self.url, self.names, self.job_ids)


def _rows(key: str, label: str, n: int, ours: LoopSample, base: LoopSample | None) -> list[Row]:
    note = "" if ours.done else " (timed out)"
    deluge = "" if base is not None else f" [{DELUGE_MISSING}]"
    rows = [
        Row(
            GROUP,
            f"loops.{key}.wall",
            f"{label}: wall{note}{deluge}",
            ours.wall_s,
            base.wall_s if base is not None else None,
            "s",
            n,
        )
    ]
    if ours.cpu_s is not None:
        base_cpu = base.cpu_s if base is not None and base.cpu_s is not None else None
        rows.append(
            Row(
                GROUP,
                f"loops.{key}.cpu",
                f"{label}: CPU per loop{note}",
                ours.cpu_s * 1000 / n,
                None if base_cpu is None else base_cpu * 1000 / n,
                "ms",
                n,
            )
        )
    return rows


def run_loop_bench(url: str, prefix: str, quick: bool, console: Console, logdir: Path) -> list[Row]:
    """Section 7 of `orchestrator bench`."""
    plan = LoopPlan.quick() if quick else LoopPlan.full()
    console.print(
        f"[bold]loops:[/] {plan.loops} agent loops (2 model calls of {plan.llm_ms} ms + 1 "
        f"tool); in-process at {list(plan.levels)} at once; {plan.workers} workers x "
        f"{plan.concurrency} slots"
    )
    bench = LoopBench(url, BenchKeys(prefix).loops, plan, console, logdir)
    try:
        bench.start_llm()
        return asyncio.run(bench.measure())
    finally:
        bench.stop()
        deleted = asyncio.run(bench.cleanup())
        console.print(f"[dim]cleanup: deleted {deleted} keys of the loop section[/]")
