"""`orchestrator bench`, sections 1-5: dispatch, per-turn overhead, event delivery,
publisher throughput and abort latency, each beside a baseline measured in the same run."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import math
import os
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from orchestrator.bench.agents import LLM_URL_ENV
from orchestrator.bench.agents import MODULE as AGENT_MODULE
from orchestrator.bench.children import ARQ_NOOP, connect_stock_arq
from orchestrator.bench.procs import (
    FIRST_START_TIMEOUT_S,
    GAP_S,
    BenchError,
    Child,
    delete_bench_keys,
    start_scripted_model,
)
from orchestrator.bench.report import Row, Summary, percentile
from orchestrator.client import connect
from orchestrator.events import (
    EventOrigin,
    EventYield,
    LLMChunkArriveEvent,
    ReactEndEvent,
    ReactStartEvent,
    output_to_json,
)
from orchestrator.keys import BenchKeys
from orchestrator.runs import RunRequest, RunStatus
from orchestrator.settings import Settings
from orchestrator.store.connection import connect as connect_raw
from orchestrator.store.queue import JobQueue, connect_queue, job_id
from orchestrator.store.streams import EventPublisher

__all__ = ["LEGEND", "Plan", "bench_script", "run_core", "split_batches"]

AGENT = f"{AGENT_MODULE}:bench_chat"
START_TIMEOUT_S = 15.0
TURN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Plan:
    """How many samples of what; `Plan.full()` or `Plan.quick()`."""

    dispatch_n: int
    warmup: int
    delivery_runs: int
    stream_words: int
    token_ms: int
    throughput_n: int
    throughput_reps: int
    abort_n: int
    long_words: int
    long_token_ms: int

    @classmethod
    def full(cls) -> Plan:
        return cls(50, 3, 3, 300, 3, 20_000, 3, 10, 6000, 5)

    @classmethod
    def quick(cls) -> Plan:
        return cls(15, 2, 1, 300, 3, 5_000, 2, 4, 6000, 5)


def bench_script(plan: Plan) -> dict[str, Any]:
    """The scripted model's answers: `bench-stream` (many fast chunks), `bench-long`
    (a stream far longer than any abort waits), anything else one word at zero latency."""

    def words(n: int) -> str:
        return " ".join(f"w{i % 1000}" for i in range(n))

    return {
        "model": "scripted",
        "latency": {"first_token_ms": 0, "token_ms": 0},
        "rules": [
            {
                "name": "stream",
                "match": {"last_user_contains": "bench-stream"},
                "reply": {"content": words(plan.stream_words)},
                "latency": {"first_token_ms": 0, "token_ms": plan.token_ms},
            },
            {
                "name": "long",
                "match": {"last_user_contains": "bench-long"},
                "reply": {"content": words(plan.long_words)},
                "latency": {"first_token_ms": 0, "token_ms": plan.long_token_ms},
            },
        ],
        "fallback": {"content": "ok"},
    }


def split_batches(items: Sequence[bytes], batches: int) -> list[Sequence[bytes]]:
    """`items` cut into `batches` consecutive, near-equal slices (none empty)."""
    batches = max(1, min(batches, len(items)))
    size, extra = divmod(len(items), batches)
    out: list[Sequence[bytes]] = []
    start = 0
    for i in range(batches):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _latency_rows(
    group: str, key: str, label: str, ours: Sequence[float], base: Sequence[float] | None
) -> list[Row]:
    """p50 and p99 rows for latencies given in seconds."""
    o = Summary.of(ours)
    b = Summary.of(base) if base else None
    return [
        Row(group, f"{key}.p50", f"{label} p50", _ms(o.p50), _ms(b.p50) if b else None, "ms", o.n),
        Row(group, f"{key}.p99", f"{label} p99", _ms(o.p99), _ms(b.p99) if b else None, "ms", o.n),
    ]


LEGEND = (
    "[b]1 enqueue→start[/]: time.time() just before the enqueue call in this process → "
    "time.time() at the first line of the job on the worker process. Ours: JobQueue.enqueue"
    " (arq enqueue + wake publish) to an idle `orchestrator worker` whose job function is a "
    "no-op; baseline: ArqRedis.enqueue_job to a stock arq Worker (default settings, "
    "poll_delay 0.5 s) running a no-op. Jobs are sequential after a random 0-500 ms gap. "
    "`submit→run started` is a real agent turn: RunRecord.started_at - submitted_at "
    "(client.submit writes the record, then enqueues); `submit→ReactStart` is the turn's "
    "first event timestamp - submitted_at. Their baseline is the same arq no-op figure.",
    "[b]2 per-turn[/]: one llm_chat turn, one streamed LLM call, no tools, scripted model at "
    "zero latency (its own process). Ours: client.submit → run.result() through a worker "
    "process; baseline: the same agent called in this process. Overhead = ours - baseline.",
    "[b]3 delivery[/]: reader's time.time() when run.stream() yields an event - the event's "
    "timestamp (set on the worker); a turn streaming one chunk per word every few ms. "
    "Baseline: another process XADDs a timestamped payload of the same size at the same "
    "pacing, one XADD each; this process reads with blocked XREAD.",
    "[b]4 events/s[/]: LLMChunkArriveEvent EventYields through one EventPublisher, then "
    "flush(); ours includes encoding each event to JSON. `burst`: publish all, then flush "
    "(one batch). `streamed`: yield to the event loop after every publish (batches form "
    "while a send is in flight, as in a turn). Baseline: raw XADDs of the pre-encoded "
    "payloads in pipelines of the same batch sizes. Median of the repetitions.",
    "[b]5 abort[/]: a long streamed turn; at a random moment after its first chunk reached "
    "the reader, run.abort() → the reader sees ReactEnd(aborted) / the terminal status entry. "
    "Workers poll the abort key every 50 ms (Settings.abort_poll_s). arq has no comparable "
    "mechanism (Job.abort is opt-in, polled and unreliable), so no baseline.",
)


@dataclass(frozen=True)
class TurnSample:
    total_s: float  # submit -> result() returned (perf_counter, this process)
    started_s: float  # record.started_at - submitted_at (time.time, across processes)
    react_start_s: float  # ReactStart event timestamp - submitted_at


@dataclass
class _AbortWatch:
    streaming: asyncio.Event = field(default_factory=asyncio.Event)
    end_at: float | None = None
    status_at: float | None = None
    status: RunStatus | None = None

    async def follow(self, entries: AsyncIterator[Any]) -> None:
        async for entry in entries:
            now = time.perf_counter()
            output = entry.output
            if isinstance(output, EventYield):
                event = output.event
                if isinstance(event, LLMChunkArriveEvent):
                    self.streaming.set()
                elif isinstance(event, ReactEndEvent) and event.extra.get("aborted"):
                    self.end_at = now
            if entry.status is not None:
                self.status_at = now
                self.status = entry.status.status


def _chunk_outputs(n: int) -> list[EventYield]:
    """Realistic streamed-chunk events (an OpenAI chunk, ~200 chars accumulated so far)."""
    call = uuid.uuid4().hex
    accumulated = ("The weather in Paris is light rain and 14 degrees. " * 4)[:200]
    return [
        EventYield(
            event=LLMChunkArriveEvent(
                chunk={
                    "id": "chatcmpl-bench",
                    "object": "chat.completion.chunk",
                    "model": "scripted",
                    "choices": [
                        {"index": 0, "delta": {"content": f" w{i}"}, "finish_reason": None}
                    ],
                },
                accumulated_content=accumulated,
                chunk_index=i,
                func_name="bench_chat",
                trace_id=call,
                iteration=1,
            ),
            origin=EventOrigin(session_id=call, agent_call_id=call, event_seq=i),
        )
        for i in range(n)
    ]


class Bench:
    """Starts the helper processes, measures, cleans up. One instance per run."""

    def __init__(self, url: str, prefix: str, plan: Plan, console: Console, logdir: Path):
        self.url = url
        self.prefix = prefix
        self.plan = plan
        self.console = console
        self.logdir = logdir
        self.token = uuid.uuid4().hex[:12]
        self.names = BenchKeys(prefix)
        self.keys = self.names.ours
        self.noop_keys = self.names.noop
        self.arq_queue = self.names.arq_queue()
        self.starts_ours = self.names.starts("ours")
        self.starts_arq = self.names.starts("arq")
        self.job_ids: set[str] = set()
        self.children: list[Child] = []
        self.rng = random.Random()
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.llm_url = ""
        self._conns: dict[str, Any] = {}

    # -- processes ----------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> Child:
        child = Child(name, [sys.executable, *argv], self.logdir, self.env)
        self.children.append(child)
        return child

    def start_children(self) -> None:
        llm, self.llm_url = start_scripted_model(
            "mock-llm", bench_script(self.plan), self.logdir, self.env
        )
        self.children.append(llm)
        self.env[LLM_URL_ENV] = self.llm_url
        cli = ["-m", "orchestrator.cli"]
        here = ["-m", "orchestrator.bench"]
        redis = ["--redis", self.url]
        self._spawn(
            "worker", [*cli, "worker", *redis, "--prefix", self.prefix, "--agents", AGENT_MODULE]
        )
        prefix = ["--prefix", self.noop_keys.prefix, "--starts", self.starts_ours]
        self._spawn("noop-worker", [*here, "noop-worker", *redis, *prefix])
        self._spawn("arq-worker", [*here, "arq-worker", *redis, "--queue", self.arq_queue])

    def stop_children(self) -> None:
        for child in reversed(self.children):
            child.stop()

    def check_children(self) -> None:
        for child in self.children:
            child.check()

    # -- connections ----------------------------------------------------------------------

    async def connect(self) -> None:
        settings = Settings(redis_url=self.url, key_prefix=self.prefix)
        noop_pool = await connect_queue(self.url, self.noop_keys)
        self._conns = {
            "client": await connect(self.url, settings=settings),
            "noop_pool": noop_pool,
            "noop_queue": JobQueue(noop_pool, self.noop_keys),
            "arq": await connect_stock_arq(self.url),
            "raw": connect_raw(self.url),
        }

    async def disconnect(self) -> None:
        for name in ("client", "noop_pool", "arq", "raw"):
            conn = self._conns.pop(name, None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    # Client closes with close(); the redis clients with aclose().
                    await (conn.close() if name == "client" else conn.aclose())

    @property
    def client(self) -> Any:
        return self._conns["client"]

    @property
    def raw(self) -> Any:
        return self._conns["raw"]

    def _local_agent(self) -> Callable[..., AsyncIterator[Any]]:
        os.environ[LLM_URL_ENV] = self.llm_url
        module = importlib.import_module(AGENT_MODULE)
        if module.llm.base_url != self.llm_url:
            module = importlib.reload(module)
        agent: Callable[..., AsyncIterator[Any]] = module.bench_chat
        return agent

    # -- primitives -------------------------------------------------------------------------

    async def _gap(self) -> None:
        await asyncio.sleep(self.rng.uniform(*GAP_S))

    async def _wait_start(self, key: str, expect: str, timeout: float = START_TIMEOUT_S) -> float:
        reply = await self.raw.blpop([key], timeout=timeout)
        if reply is None:
            self.check_children()
            raise BenchError(f"job {expect} did not start within {timeout:.0f} s")
        record = json.loads(reply[1])
        if record.get("id") != expect:
            raise BenchError(f"expected the start of {expect}, got {record!r}")
        return float(record["start"])

    async def _noop_ours(self, tag: str, timeout: float = START_TIMEOUT_S) -> float:
        run_id = f"{self.token}-noop-{tag}"
        request = RunRequest(run_id=run_id, session_id=run_id, agent=AGENT)
        self.job_ids.add(job_id(run_id, 1))
        sent = time.time()
        await self._conns["noop_queue"].enqueue(request)
        return await self._wait_start(self.starts_ours, run_id, timeout) - sent

    async def _noop_arq(self, tag: str, timeout: float = START_TIMEOUT_S) -> float:
        jid = f"{self.token}-arq-{tag}"
        self.job_ids.add(jid)
        sent = time.time()
        await self._conns["arq"].enqueue_job(
            ARQ_NOOP, self.starts_arq, jid, _job_id=jid, _queue_name=self.arq_queue
        )
        return await self._wait_start(self.starts_arq, jid, timeout) - sent

    async def _submit(self, message: str) -> Any:
        run = await self.client.submit(AGENT, message)
        self.job_ids.add(f"{run.run_id}:1")
        return run

    async def _turn_distributed(self) -> TurnSample:
        t0 = time.perf_counter()
        run = await self._submit("bench-turn")
        result = await run.result(timeout=TURN_TIMEOUT_S)
        total = time.perf_counter() - t0
        if not result.ok:
            self.check_children()
            raise BenchError(f"turn {run.run_id} ended {result.status.value}: {result.error}")
        record = await run.status()
        submitted = record.submitted_at
        started = record.started_at if record.started_at is not None else math.nan
        react_start = await self._react_start_ts(run.session_id)
        return TurnSample(total, started - submitted, react_start - submitted)

    async def _react_start_ts(self, session_id: str) -> float:
        for entry in await self.client.reader.read(session_id, count=50):
            output = entry.output
            if isinstance(output, EventYield) and isinstance(output.event, ReactStartEvent):
                return output.event.timestamp.timestamp()
        raise BenchError(f"no ReactStart event in session {session_id}")

    async def _turn_local(self, agent: Callable[..., AsyncIterator[Any]]) -> float:
        t0 = time.perf_counter()
        async for _ in agent("bench-turn"):
            pass
        return time.perf_counter() - t0

    # -- 1 + 2: dispatch latency and per-turn overhead ---------------------------------

    async def warm_up(self) -> None:
        agent = self._local_agent()
        for i in range(self.plan.warmup):
            await self._noop_ours(f"warm{i}", FIRST_START_TIMEOUT_S)
            await self._noop_arq(f"warm{i}", FIRST_START_TIMEOUT_S)
            await self._turn_distributed()
            await self._turn_local(agent)

    async def measure_dispatch_and_turns(self) -> list[Row]:
        agent = self._local_agent()
        ours: list[float] = []
        arq: list[float] = []
        turns: list[TurnSample] = []
        local: list[float] = []
        # Interleaved, so drifting machine noise hits ours and the baselines alike.
        for i in range(self.plan.dispatch_n):
            await self._gap()
            ours.append(await self._noop_ours(str(i)))
            await self._gap()
            arq.append(await self._noop_arq(str(i)))
            await self._gap()
            turns.append(await self._turn_distributed())
            local.append(await self._turn_local(agent))
        return _dispatch_rows(ours, arq, turns) + _turn_rows(turns, local)

    # -- 3: event delivery ----------------------------------------------------------------

    async def measure_delivery(self) -> list[Row]:
        ours: list[float] = []
        for _ in range(self.plan.delivery_runs):
            await self._gap()
            run = await self._submit("bench-stream")
            before = len(ours)
            async for output in run.stream():
                if isinstance(output, EventYield):
                    ours.append(time.time() - output.event.timestamp.timestamp())
            status = (await run.status()).status
            if status is not RunStatus.COMPLETED or len(ours) - before < self.plan.stream_words:
                raise BenchError(
                    f"streaming turn {run.run_id} ended {status.value} after "
                    f"{len(ours) - before} events (expected > {self.plan.stream_words})"
                )
        base = await self._raw_delivery(len(ours))
        label = "delivery worker→reader"
        return _latency_rows("3 delivery", "delivery", label, ours, base)

    async def _raw_delivery(self, count: int) -> list[float]:
        stream = self.names.raw_stream("delivery")
        sample = output_to_json(_chunk_outputs(1)[0])
        pad = max(0, len(sample) - 40)
        reader = asyncio.create_task(self._read_raw(stream))
        await asyncio.sleep(0.05)  # the reader is blocked in XREAD before anything is sent
        writer = self._spawn(
            "xadd-writer",
            [
                *("-m", "orchestrator.bench", "xadd-writer", "--redis", self.url),
                *("--stream", stream, "--count", str(count)),
                *("--interval-ms", str(self.plan.token_ms), "--pad", str(pad)),
            ],
        )
        try:
            return await asyncio.wait_for(reader, TURN_TIMEOUT_S)
        finally:
            reader.cancel()
            await asyncio.to_thread(writer.stop)
            await self.raw.delete(stream)

    async def _read_raw(self, stream: str) -> list[float]:
        latencies: list[float] = []
        last = "0-0"
        while True:
            reply = await self.raw.xread({stream: last}, count=500, block=10_000)
            if not reply:
                raise BenchError("the raw XADD writer sent nothing for 10 s")
            for entry_id, fields in reply[0][1]:
                last = entry_id
                if b"end" in fields:
                    return latencies
                data = json.loads(fields[b"data"])
                latencies.append(time.time() - data["ts"])

    # -- 4: publisher throughput ------------------------------------------------------

    async def measure_throughput(self) -> list[Row]:
        outputs = _chunk_outputs(self.plan.throughput_n)
        payloads = [output_to_json(o) for o in outputs]
        rates: dict[str, list[float]] = {k: [] for k in ("burst", "burst0", "stream", "stream0")}
        streamed_batches: list[float] = []
        for _ in range(self.plan.throughput_reps):
            rate, batches = await self._publish(outputs, streamed=False)
            rates["burst"].append(rate)
            rates["burst0"].append(await self._raw_xadd(payloads, batches))
            rate, batches = await self._publish(outputs, streamed=True)
            rates["stream"].append(rate)
            rates["stream0"].append(await self._raw_xadd(payloads, batches))
            streamed_batches.append(batches)
        n = self.plan.throughput_n
        per_batch = n / percentile(streamed_batches, 50)
        med = {k: percentile(v, 50) for k, v in rates.items()}
        labels = ("events/s, burst (1 batch)", f"events/s, streamed (~{per_batch:.0f}/batch)")
        keys = ("events_per_s.burst", "events_per_s.streamed")
        values = ((med["burst"], med["burst0"]), (med["stream"], med["stream0"]))
        return [
            Row("4 events/s", key, label, ours, base, "ev/s", n)
            for key, label, (ours, base) in zip(keys, labels, values, strict=True)
        ]

    async def _publish(self, outputs: Sequence[EventYield], *, streamed: bool) -> tuple[float, int]:
        session = uuid.uuid4().hex
        publisher = EventPublisher(
            self.raw,
            self.keys,
            session_id=session,
            run_id=session,
            items_per_entry=Settings().stream_items_per_entry,  # as a worker's
        )
        t0 = time.perf_counter()
        for output in outputs:
            publisher.publish(output)
            if streamed:
                await asyncio.sleep(0)
        await publisher.flush()
        elapsed = time.perf_counter() - t0
        await publisher.close(expire=False)
        batches = publisher.stats.batches
        if publisher.stats.delivered != len(outputs):
            raise BenchError(f"publisher delivered {publisher.stats.delivered}/{len(outputs)}")
        await self.raw.delete(
            self.keys.events(session), self.keys.seqs(session), self.keys.publishers(session)
        )
        return len(outputs) / elapsed, batches

    async def _raw_xadd(self, payloads: Sequence[bytes], batches: int) -> float:
        stream = self.names.raw_stream("xadd")
        run_id = uuid.uuid4().hex
        t0 = time.perf_counter()
        for batch in split_batches(payloads, batches):
            pipe = self.raw.pipeline(transaction=False)
            for data in batch:
                pipe.xadd(stream, {"v": "1", "kind": "event", "run": run_id, "data": data})
            await pipe.execute()
        elapsed = time.perf_counter() - t0
        await self.raw.delete(stream)
        return len(payloads) / elapsed

    # -- 5: abort latency -------------------------------------------------------------

    async def measure_abort(self) -> list[Row]:
        ends: list[float] = []
        statuses: list[float] = []
        for _ in range(self.plan.abort_n):
            end, status = await self._abort_once()
            ends.append(end)
            statuses.append(status)
        return _latency_rows(
            "5 abort", "abort.react_end", "abort→ReactEnd seen", ends, None
        ) + _latency_rows("5 abort", "abort.status", "abort→status seen", statuses, None)

    async def _abort_once(self) -> tuple[float, float]:
        await self._gap()
        run = await self._submit("bench-long")
        watch = _AbortWatch()
        reader = asyncio.create_task(watch.follow(run.entries()))
        try:
            await asyncio.wait_for(watch.streaming.wait(), TURN_TIMEOUT_S)
            await asyncio.sleep(self.rng.uniform(0.05, 0.5))
            t0 = time.perf_counter()
            await run.abort("bench")
            await asyncio.wait_for(asyncio.shield(reader), TURN_TIMEOUT_S)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if watch.status is not RunStatus.ABORTED or watch.end_at is None:
            raise BenchError(f"run {run.run_id} was not aborted mid-stream ({watch.status})")
        assert watch.status_at is not None
        return watch.end_at - t0, watch.status_at - t0

    # -- all --------------------------------------------------------------------------

    async def run(self) -> list[Row]:
        await self.connect()
        try:
            steps: list[tuple[str, Callable[[], Any]]] = [
                ("warming up (first jobs also wait for the workers to start)", self.warm_up),
                ("1+2 dispatch latency and per-turn overhead", self.measure_dispatch_and_turns),
                ("3 event delivery", self.measure_delivery),
                ("4 publisher throughput", self.measure_throughput),
                ("5 abort latency", self.measure_abort),
            ]
            rows: list[Row] = []
            for title, step in steps:
                t0 = time.perf_counter()
                self.console.print(f"[dim]… {title}[/]", highlight=False)
                rows.extend(await step() or [])
                self.console.print(
                    f"[dim]  done in {time.perf_counter() - t0:.1f} s[/]", highlight=False
                )
            return rows
        finally:
            await self.disconnect()

    async def cleanup(self) -> int:
        """Delete every key under the prefix and the arq keys of the bench's jobs."""
        return await delete_bench_keys(self.url, self.names, self.job_ids)


def _dispatch_rows(ours: list[float], arq: list[float], turns: list[TurnSample]) -> list[Row]:
    group = "1 dispatch"
    return (
        _latency_rows(group, "dispatch.noop", "enqueue→start, no-op job", ours, arq)
        + _latency_rows(
            group,
            "dispatch.turn",
            "submit→run started, turn",
            [t.started_s for t in turns],
            arq,
        )
        + _latency_rows(
            group,
            "dispatch.react_start",
            "submit→ReactStart, turn",
            [t.react_start_s for t in turns],
            arq,
        )
    )


def _turn_rows(turns: list[TurnSample], local: list[float]) -> list[Row]:
    dist = Summary.of([_ms(t.total_s) for t in turns])
    here = Summary.of([_ms(x) for x in local])
    figures = (
        ("turn.mean", "turn time, mean", dist.mean, here.mean),
        ("turn.p50", "turn time, p50", dist.p50, here.p50),
        ("turn.overhead_mean", "overhead per turn, mean", dist.mean - here.mean, None),
        ("turn.overhead_p50", "overhead per turn, p50", dist.p50 - here.p50, None),
    )
    return [Row("2 per-turn", k, m, o, b, "ms", dist.n) for k, m, o, b in figures]


def run_core(url: str, prefix: str, quick: bool, console: Console, logdir: Path) -> list[Row]:
    """Sections 1-5; raises BenchError if something could not be measured."""
    bench = Bench(url, prefix, Plan.quick() if quick else Plan.full(), console, logdir)
    try:
        bench.start_children()
        return asyncio.run(bench.run())
    finally:
        bench.stop_children()
        deleted = asyncio.run(bench.cleanup())
        console.print(f"[dim]cleanup: deleted {deleted} keys under {prefix!r} and arq's[/]")
