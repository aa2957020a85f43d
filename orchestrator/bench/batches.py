"""`orchestrator bench`, section 7: lm-deluge's client, in one process and on the cluster.

    ours       `Client.submit_batch` of N prompts to 2 `orchestrator worker` processes
               (`concurrency` slots each), one job per item, every request passing the
               shared Redis rate limiter (limits set far above what is reached, so it
               costs its round trip but never waits). Measured: submit_batch called ->
               the batch's progress reads finished, in this process.
    baseline   `LLMClient.process_prompts_async` of the same N prompts in this process,
               with as many concurrent requests as the two workers have slots.

Each side runs `reps` times, interleaved (the order alternating); the median is shown.

Both talk to one scripted model process answering every prompt after `llm_ms`. Keys live
under `<prefix>:batches` and are deleted at the end with the arq keys of every item job.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from orchestrator.bench.agents import MODULE as AGENT_MODULE
from orchestrator.bench.procs import BenchError, Child, delete_bench_keys, start_scripted_model
from orchestrator.bench.report import Row
from orchestrator.client import connect
from orchestrator.deluge import LLMClient, ModelRegistry, ModelSpec
from orchestrator.keys import BenchKeys
from orchestrator.settings import Settings
from orchestrator.store.batches import item_job_id

__all__ = ["BATCH_LEGEND", "BatchPlan", "run_batch_bench"]

GROUP = "7 batches"
MODEL = "bench-scripted"
BATCH_LEGEND = (
    "[b]7 batches[/]: N prompts answered by one scripted model (fixed latency). Ours: "
    "Client.submit_batch on 2 worker processes, one arq job per item, each request through "
    "the shared Redis rate limiter (limits never reached); submit → progress finished. "
    "Baseline: LLMClient.process_prompts_async of the same prompts in this process, as "
    "many concurrent requests as the workers' slots together.",
)


@dataclass(frozen=True)
class BatchPlan:
    prompts: int = 1_000
    llm_ms: int = 20
    concurrency: int = 50  # per worker; the in-process client gets 2x
    workers: int = 2
    reps: int = 3  # each side, interleaved; the median is reported

    @classmethod
    def quick(cls) -> BatchPlan:
        return cls(prompts=200, reps=1)


def _registry(base_url: str) -> ModelRegistry:
    spec = ModelSpec(name=MODEL, api_base=base_url, model_id="scripted")
    return ModelRegistry({MODEL: spec})


class BatchBench:
    def __init__(self, url: str, names: BenchKeys, plan: BatchPlan, logdir: Path) -> None:
        self.url = url
        self.keys = names.ours
        self.names = names
        self.plan = plan
        self.logdir = logdir
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.children: list[Child] = []
        self.base_url = ""
        self.job_ids: list[str] = []
        self.samples: dict[str, list[float]] = {}

    def start(self) -> None:
        script = {
            "latency": {"first_token_ms": self.plan.llm_ms},
            "fallback": {"content": "ok {last_user}"},
        }
        llm, self.base_url = start_scripted_model("batch-mock-llm", script, self.logdir, self.env)
        self.children.append(llm)
        for i in range(self.plan.workers):
            argv = [
                *("-m", "orchestrator.cli", "worker", "--redis", self.url),
                *("--prefix", self.keys.prefix, "--agents", AGENT_MODULE),
                *("--concurrency", str(self.plan.concurrency)),
            ]
            self.children.append(
                Child(f"batch-worker-{i + 1}", [sys.executable, *argv], self.logdir, self.env)
            )

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()

    async def in_process(self) -> float:
        client = LLMClient(
            MODEL,
            registry=_registry(self.base_url),
            max_concurrent_requests=self.plan.concurrency * self.plan.workers,
            max_requests_per_minute=10**9,
            max_tokens_per_minute=10**12,
            progress="none",
        )
        prompts = [f"prompt {i}" for i in range(self.plan.prompts)]
        started = time.perf_counter()
        responses = await client.process_prompts_async(prompts, show_progress=False)
        elapsed = time.perf_counter() - started
        failed = sum(r.is_error for r in responses)
        if failed:
            raise BenchError(f"in-process batch: {failed} prompts failed")
        return elapsed

    async def on_workers(self) -> float:
        settings = Settings(redis_url=self.url, key_prefix=self.keys.prefix)
        client = await connect(self.url, settings=settings)
        async with client:
            await self._wait_for_workers(client)
            prompts = [f"prompt {i}" for i in range(self.plan.prompts)]
            started = time.perf_counter()
            batch = await client.submit_batch(
                prompts,
                model=MODEL,
                registry=_registry(self.base_url),
                max_requests_per_minute=10**9,
                max_tokens_per_minute=10**12,
                limiter_name=f"{self.keys.prefix}-bench",
            )
            self.job_ids.extend(item_job_id(batch.batch_id, i) for i in range(len(prompts)))
            progress = await batch.wait(timeout=300, poll_s=0.02)
            elapsed = time.perf_counter() - started
        if progress.failed:
            raise BenchError(f"batch on workers: {progress.failed} prompts failed")
        return elapsed

    async def _wait_for_workers(self, client: object) -> None:
        deadline = time.monotonic() + 45
        while len(await client.workers.list()) < self.plan.workers:  # type: ignore[attr-defined]
            for child in self.children:
                child.check()
            if time.monotonic() > deadline:
                raise BenchError("the batch workers did not start")
            await asyncio.sleep(0.1)

    async def measure(self) -> list[Row]:
        walls: dict[str, list[float]] = {"ours": [], "baseline": []}
        for rep in range(self.plan.reps):
            # alternate which side goes first, so neither always meets a warmer machine
            sides = ("ours", "baseline") if rep % 2 == 0 else ("baseline", "ours")
            for side in sides:
                run = self.on_workers if side == "ours" else self.in_process
                walls[side].append(await run())
        self.samples = walls
        ours, baseline = statistics.median(walls["ours"]), statistics.median(walls["baseline"])
        n = self.plan.prompts
        return [
            Row(
                GROUP,
                "batches.wall",
                f"{n} prompts: {self.plan.workers} workers vs 1 process (median)",
                ours * 1000,
                baseline * 1000,
                "ms",
                n,
            ),
            Row(
                GROUP,
                "batches.per_prompt",
                "per prompt (wall / N)",
                ours * 1000 / n,
                baseline * 1000 / n,
                "ms",
                n,
            ),
        ]


def run_batch_bench(
    url: str, prefix: str, quick: bool, console: Console, logdir: Path
) -> list[Row]:
    """Section 7 of `orchestrator bench`. Raises `BenchError` if it could not measure."""
    plan = BatchPlan.quick() if quick else BatchPlan()
    console.print(
        f"[bold]batches:[/] {plan.prompts} prompts, scripted model at {plan.llm_ms} ms; "
        f"{plan.workers} workers x {plan.concurrency} slots vs one process"
    )
    bench = BatchBench(url, BenchKeys(prefix).batches, plan, logdir)
    try:
        bench.start()
        rows = asyncio.run(bench.measure())
        for side, walls in bench.samples.items():
            shown = ", ".join(f"{wall:.2f}" for wall in walls)
            console.print(f"[dim]batches {side}: wall seconds per rep: {shown}[/]")
        return rows
    finally:
        bench.stop()
        deleted = asyncio.run(delete_bench_keys(url, bench.names, bench.job_ids))
        console.print(f"[dim]cleanup: deleted {deleted} keys of the batch section[/]")
