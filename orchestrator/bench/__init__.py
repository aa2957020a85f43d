"""`orchestrator bench`: issue 3's figures, each beside a baseline measured in the same run.

    1. enqueue-to-start latency    ours: an idle `orchestrator worker` (woken by pub/sub)
                                   baseline: a stock arq Worker, default settings (0.5 s poll)
    2. per-turn overhead           ours: submit -> result() through a worker
                                   baseline: the same llm_chat agent run in-process
    3. event delivery worker->reader
                                   ours: event.timestamp (set on the worker) -> run.stream()
                                   baseline: raw XADD (another process) -> blocked XREAD
    4. events/s from one worker    ours: EventPublisher (encode + batched MULTI/EXEC)
                                   baseline: raw pipelined XADD of the same JSON payloads
    5. abort latency               run.abort() -> the run's ReactEnd / terminal status seen
                                   by a reader (arq has no equivalent: no baseline)
    6. fork fan-out                in `orchestrator.bench.forks`: N forks gathered by one
                                   parent on 1 and 2 workers; baseline: N no-op arq jobs;
                                   the abort of a depth-3 fork tree; 300 forks with 1 ms
                                   added each way between the workers and Redis
    7. agent loops                 in `orchestrator.bench.loops`: 1,000 loops (2 model
                                   calls + 1 tool) in-process and on 2 workers; baseline:
                                   lm-deluge's process_agent_loops_async
    8. batches                     in `orchestrator.bench.batches`: 1,000 prompts through
                                   Client.submit_batch on 2 workers; baseline: the same
                                   through LLMClient.process_prompts_async in one process

`--only core` runs 1-5, `--only forks` 6, `--only loops` 7, `--only batches` 8; the
default runs all.

Every worker (ours and arq's) and the scripted model run as subprocesses so the measuring
process shares no event loop with them. Local intervals use time.perf_counter; intervals
across processes use time.time (one machine, one clock). Redis: the URL given to
`run_bench`; the command picks `--redis`, else $ORCHESTRATOR_REDIS_URL, else the real
Redis at 127.0.0.1:6379 if it answers, else an embedded one. All keys live under a
unique prefix and are deleted at the end (SCAN + DEL, plus the arq job keys of the jobs
the bench created; never FLUSH*).

`python -m orchestrator.bench ROLE ...` runs the bench's helper processes (no-op worker,
stock arq worker, raw XADD writer); it is not meant to be called by hand.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from orchestrator.bench.batches import BATCH_LEGEND, run_batch_bench
from orchestrator.bench.core import LEGEND, run_core
from orchestrator.bench.forks import FORK_LEGEND, run_fork_bench
from orchestrator.bench.loops import LOOP_LEGEND, run_loop_bench
from orchestrator.bench.procs import BenchError
from orchestrator.bench.report import RATIO_NOTE, Row, render

__all__ = ["SECTIONS", "run_bench"]


def _unique_prefix(base: str | None) -> str:
    return f"{base or 'bench'}-{uuid.uuid4().hex[:10]}"


SECTIONS = ("core", "forks", "loops", "batches")


def _measure(
    sections: Sequence[str], url: str, prefix: str, quick: bool, console: Console, logdir: Path
) -> list[Row]:
    rows: list[Row] = []
    if "core" in sections:
        rows.extend(run_core(url, prefix, quick, console, logdir))
    if "forks" in sections:
        rows.extend(run_fork_bench(url, prefix, quick, console, logdir))
    if "loops" in sections:
        rows.extend(run_loop_bench(url, prefix, quick, console, logdir))
    if "batches" in sections:
        rows.extend(run_batch_bench(url, prefix, quick, console, logdir))
    return rows


def _legend(sections: Sequence[str]) -> list[str]:
    lines = [RATIO_NOTE]
    if "core" in sections:
        lines.extend(LEGEND)
    if "forks" in sections:
        lines.extend(FORK_LEGEND)
    if "loops" in sections:
        lines.extend(LOOP_LEGEND)
    if "batches" in sections:
        lines.extend(BATCH_LEGEND)
    return lines


def run_bench(
    redis_url: str,
    *,
    redis_label: str | None = None,
    quick: bool = False,
    only: str | None = None,
    prefix: str | None = None,
) -> int:
    """`orchestrator bench`: measure, print the table and one JSON line. 0 on success.

    Keys live under a unique prefix starting with `prefix` (default "bench") and are
    deleted at the end. `only` ("core": sections 1-5, "forks": section 6) runs one part;
    default both. `redis_label` says in the output which Redis that is."""
    logging.getLogger("arq").setLevel(logging.WARNING)
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=110)
    label = redis_label or redis_url
    sections = [only] if only else list(SECTIONS)
    mode = "quick" if quick else "full"
    prefix = _unique_prefix(prefix)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-") as tmp:
        console.print(f"[bold]redis:[/] {label}; key prefix {prefix!r}")
        console.print(
            f"[bold]machine:[/] {os.cpu_count()} cores; {mode} run; {', '.join(sections)}"
        )
        try:
            rows = _measure(sections, redis_url, prefix, quick, console, Path(tmp))
        except BenchError as exc:
            console.print(f"[red]bench failed:[/] {exc}")
            return 1
    elapsed = time.perf_counter() - started
    render(console, rows, f"orchestrator bench ({mode}, {elapsed:.0f} s)", _legend(sections))
    summary = {
        "bench": "orchestrator",
        "quick": quick,
        "sections": sections,
        "redis": label,
        "elapsed_s": round(elapsed, 1),
        "figures": {row.key: row.as_json() for row in rows},
    }
    print(json.dumps(summary, ensure_ascii=False), flush=True)
    return 0
