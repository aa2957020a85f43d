"""Batched SSE (`?batch=true`): entries that arrive together are one message whose id is
the last entry's, so a burst is a few messages and a reconnect repeats nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from orchestrator.api.sse import BATCH_MAX, BATCH_WINDOW_S, KEEPALIVE, sse_body
from orchestrator.errors import StoreUnavailable
from orchestrator.runs import RunStatus, StatusEntry, StreamEntry

pytestmark = pytest.mark.timeout(10)


def entry(n: int) -> StreamEntry:
    return StreamEntry(
        id=f"{n}-0",
        run_id="r1",
        kind="status",
        status=StatusEntry(run_id="r1", status=RunStatus.RUNNING),
    )


def messages(chunks: list[bytes]) -> list[dict[str, object]]:
    """The SSE messages (not comments) as {"id", "event", "data"}."""
    out = []
    for chunk in chunks:
        fields = dict(
            line.split(": ", 1) for line in chunk.decode().strip().split("\n") if ": " in line
        )
        if "event" in fields:
            out.append({**fields, "data": json.loads(fields["data"])})
    return out


async def collect(body: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in body]


async def burst(count: int) -> AsyncIterator[StreamEntry]:
    for n in range(1, count + 1):
        yield entry(n)


async def test_a_burst_is_one_message_holding_every_entry_with_the_last_id() -> None:
    sent = messages(await collect(sse_body(burst(40), keepalive_s=1, batch=True)))
    assert len(sent) == 1
    assert sent[0]["event"] == "batch"
    assert sent[0]["id"] == "40-0"
    data = sent[0]["data"]
    assert isinstance(data, list)
    assert [e["id"] for e in data] == [f"{n}-0" for n in range(1, 41)]


async def test_entries_apart_in_time_go_in_separate_batches() -> None:
    async def spaced() -> AsyncIterator[StreamEntry]:
        yield entry(1)
        yield entry(2)
        await asyncio.sleep(BATCH_WINDOW_S * 10)
        yield entry(3)

    sent = messages(await collect(sse_body(spaced(), keepalive_s=1, batch=True)))
    assert [m["id"] for m in sent] == ["2-0", "3-0"]
    assert [len(m["data"]) for m in sent] == [2, 1]  # type: ignore[arg-type]


async def test_a_batch_holds_at_most_batch_max_entries() -> None:
    sent = messages(await collect(sse_body(burst(BATCH_MAX + 3), keepalive_s=1, batch=True)))
    assert [len(m["data"]) for m in sent] == [BATCH_MAX, 3]  # type: ignore[arg-type]
    assert sent[-1]["id"] == f"{BATCH_MAX + 3}-0"


async def test_keepalives_still_fill_the_gaps_between_batches() -> None:
    async def slow() -> AsyncIterator[StreamEntry]:
        yield entry(1)
        await asyncio.sleep(0.25)
        yield entry(2)

    chunks = await collect(sse_body(slow(), keepalive_s=0.05, batch=True))
    assert chunks.count(KEEPALIVE) >= 2
    assert [m["id"] for m in messages(chunks)] == ["1-0", "2-0"]


async def test_a_store_failure_sends_the_batch_so_far_then_an_error() -> None:
    async def failing() -> AsyncIterator[StreamEntry]:
        yield entry(1)
        yield entry(2)
        raise StoreUnavailable("Redis went away")

    sent = messages(await collect(sse_body(failing(), keepalive_s=1, batch=True)))
    assert [m["event"] for m in sent] == ["batch", "error"]
    assert [e["id"] for e in sent[0]["data"]] == ["1-0", "2-0"]  # type: ignore[union-attr]
    assert "Redis went away" in str(sent[1]["data"])


async def test_the_tail_after_the_entries_is_sent_as_before() -> None:
    async def tail() -> AsyncIterator[dict[str, object]]:
        yield {"kind": "status", "id": None}

    sent = messages(await collect(sse_body(burst(3), keepalive_s=1, tail=tail(), batch=True)))
    assert [m["event"] for m in sent] == ["batch", "status"]
