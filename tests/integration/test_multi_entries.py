"""Several outputs in one stream entry on the real Redis: a tail whose connection drops in
the middle of an entry, or that stops there and is resumed after the last output it
yielded, loses and repeats nothing; the HTTP API resumes after an output mid-entry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from orchestrator.keys import Keys
from orchestrator.runs import StreamEntry
from orchestrator.settings import Settings
from orchestrator.store.connection import Redis
from orchestrator.store.streams import EventPublisher, StreamReader
from tests.fixtures_api import AGENT, ApiFactory, parse_sse
from tests.fixtures_redis import event_output, kill_connections, payloads

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@pytest.fixture
def api_settings(redis_url: str, keys: Keys, redis: Redis) -> Settings:
    """The API's and worker's settings: outputs written together share an entry."""
    return Settings(redis_url=redis_url, key_prefix=keys.prefix, stream_items_per_entry=64)


def _publisher(redis: Redis, keys: Keys) -> EventPublisher:
    return EventPublisher(redis, keys, session_id="s1", run_id="r1", items_per_entry=64)


async def test_a_tail_whose_connection_drops_mid_entry_loses_and_repeats_nothing(
    redis: Redis, keys: Keys, make_redis: Callable[..., Redis]
) -> None:
    name = f"{keys.prefix}-multi-reader"
    reader = StreamReader(make_redis(client_name=name), keys, reconnect_backoff_s=0.01)
    publisher = _publisher(redis, keys)
    total = 400
    got: list[StreamEntry] = []
    killed = 0

    async def follow() -> None:
        nonlocal killed
        async for entry in reader.tail("s1", block_ms=1000, count=3):
            got.append(entry)
            if "." in entry.id and len(got) % 7 == 0:
                # In the middle of an entry: its connection goes, more is written.
                killed += await kill_connections(redis, name)
            if len(got) == total:
                return

    task = asyncio.create_task(follow())
    for chunk in range(8):
        for i in range(chunk * 50, chunk * 50 + 50):
            publisher.publish(event_output(i))
        await publisher.flush()
        await asyncio.sleep(0.02)
    await asyncio.wait_for(task, 20)
    assert killed > 0
    assert payloads(got) == list(range(total))
    assert len({e.id for e in got}) == total
    assert await redis.xlen(keys.events("s1")) < total / 10


async def test_a_tail_resumed_after_any_output_mid_entry_yields_exactly_the_rest(
    redis: Redis, keys: Keys
) -> None:
    publisher = _publisher(redis, keys)
    for i in range(5):
        publisher.publish(event_output(i))
    await publisher.flush()
    reader = StreamReader(redis, keys)
    everything = [e async for e in reader.tail("s1", follow=False)]
    assert sum("." in e.id for e in everything) == 4

    for cut, stopped_at in enumerate(everything):
        rest: list[StreamEntry] = []

        async def follow(
            after: str = stopped_at.id, into: list[StreamEntry] = rest, last: int = 5 + cut
        ) -> None:
            async for entry in reader.tail("s1", after=after, block_ms=1000):
                into.append(entry)
                if payloads([entry]) == [last]:
                    return

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.02)
        publisher.publish(event_output(5 + cut))
        await publisher.flush()
        await asyncio.wait_for(task, 5)
        assert payloads(rest) == [*range(cut + 1, 5), *range(5, 5 + cut + 1)]


async def test_the_api_resumes_after_an_output_in_the_middle_of_an_entry(
    make_api: ApiFactory, worker: object
) -> None:
    api = make_api()
    answer = await api.post("/v1/runs", json={"agent": AGENT, "message": "weather in Paris?"})
    assert answer.status_code == 202, answer.text
    url = f"/v1/runs/{answer.json()['run_id']}/events"
    everything = parse_sse((await api.get(url)).text)
    ids = [m["id"] for m in everything]
    assert len(ids) == len(set(ids))
    inside = [n for n, id_ in enumerate(ids) if "." in id_]
    assert inside  # the worker wrote outputs together in one entry
    for cut in inside:
        resumed = await api.get(url, headers={"Last-Event-ID": ids[cut]})
        assert [m["id"] for m in parse_sse(resumed.text)] == ids[cut + 1 :]
        by_query = await api.get(url, params={"from": ids[cut]})
        assert [m["id"] for m in parse_sse(by_query.text)] == ids[cut + 1 :]
    batched = parse_sse((await api.get(url, params={"batch": "true"})).text)
    assert [e["id"] for m in batched for e in m["data"]] == ids
    bad = await api.get(url, headers={"Last-Event-ID": ids[inside[0]] + "x"})
    assert bad.status_code == 400


async def test_a_page_of_one_entry_holds_all_its_outputs_and_resumes_mid_entry(
    redis: Redis, keys: Keys
) -> None:
    publisher = _publisher(redis, keys)
    for i in range(4):
        publisher.publish(event_output(i))
    await publisher.flush()
    reader = StreamReader(redis, keys)
    first = await reader.read("s1", count=1)
    assert len(first) == 4  # one entry, four outputs
    page = await reader.read_page("s1", after=first[1].id)
    assert payloads(page.entries) == [2, 3]
    assert page.last_id == first[-1].id
