"""SSE framing and keep-alives, and the Prometheus exposition, without Redis."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator

from orchestrator.api.metrics import MetricsSnapshot, quantile, render
from orchestrator.api.sse import KEEPALIVE, format_event, sse_body
from orchestrator.errors import StoreUnavailable
from orchestrator.runs import RunRecord, RunStatus, StatusEntry, StreamEntry


def status_entry(entry_id: str, status: RunStatus = RunStatus.RUNNING) -> StreamEntry:
    return StreamEntry(
        id=entry_id, run_id="r1", kind="status", status=StatusEntry(run_id="r1", status=status)
    )


def test_an_event_is_id_event_and_one_line_of_json() -> None:
    frame = format_event({"text": "two\nlines"}, event="status", event_id="5-1").decode()
    assert frame == 'id: 5-1\nevent: status\ndata: {"text":"two\\nlines"}\n\n'


async def collect(body: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in body]


async def test_keepalives_fill_the_gaps_between_entries() -> None:
    async def slow() -> AsyncIterator[StreamEntry]:
        yield status_entry("1-0")
        await asyncio.sleep(0.25)
        yield status_entry("2-0", RunStatus.COMPLETED)

    chunks = await collect(sse_body(slow(), keepalive_s=0.05))
    assert chunks[0].startswith(b"retry: ")
    assert chunks.count(KEEPALIVE) >= 3
    frames = [c for c in chunks if c.startswith(b"id: ")]
    assert [f.split(b"\n")[0] for f in frames] == [b"id: 1-0", b"id: 2-0"]
    data = json.loads(frames[1].split(b"data: ")[1])
    assert data["status"]["status"] == "completed"


async def test_a_store_failure_ends_the_stream_with_an_error_event() -> None:
    async def failing() -> AsyncIterator[StreamEntry]:
        yield status_entry("1-0")
        raise StoreUnavailable("Redis went away")

    chunks = await collect(sse_body(failing(), keepalive_s=1))
    assert chunks[-1].startswith(b"event: error\n")
    assert b"Redis went away" in chunks[-1]


def test_quantiles_are_nearest_rank_and_nan_when_empty() -> None:
    assert math.isnan(quantile([], 0.5))
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0


def test_the_exposition_has_help_type_and_samples() -> None:
    runs = [
        RunRecord(
            run_id=f"r{i}",
            session_id="s",
            agent="m:f",
            status=RunStatus.COMPLETED,
            submitted_at=100.0,
            started_at=100.0 + i / 10,
            finished_at=101.0 + i,
            usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        )
        for i in range(1, 4)
    ]
    text = render(
        MetricsSnapshot.from_runs(
            runs, queue_depth=4, runs_by_status={"completed": 3}, live_workers=2, open_api=True
        )
    )
    assert text.endswith("\n")
    assert "# TYPE orchestrator_dispatch_latency_seconds summary" in text
    assert 'orchestrator_dispatch_latency_seconds{quantile="0.5"} 0.2' in text
    assert "orchestrator_dispatch_latency_seconds_count 3" in text
    assert 'orchestrator_tokens{kind="total"} 45' in text
    assert 'orchestrator_runs{status="completed"} 3' in text
    assert "orchestrator_queue_depth 4" in text
    assert "orchestrator_api_open 1" in text
    empty = render(
        MetricsSnapshot.from_runs(
            [], queue_depth=0, runs_by_status={}, live_workers=0, open_api=False
        )
    )
    assert 'orchestrator_dispatch_latency_seconds{quantile="0.9"} NaN' in empty
