"""Resuming after an item id whose entry id is spelled with leading zeros (Redis reads
"0170...-0" and "170...-00" as the same id; the API's patterns take them) yields exactly
the outputs after it, as the canonical spelling does."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.store.streams import EventPublisher, StreamReader
from orchestrator.store.trees import TreeReader
from tests.fixtures_redis import event_output, payloads

pytestmark = pytest.mark.timeout(10)


async def _entry_of_three(redis: Any, keys: Keys) -> str:
    publisher = EventPublisher(redis, keys, session_id="s1", run_id="r1", items_per_entry=64)
    for i in range(3):
        publisher.publish(event_output(i))
    await publisher.close(expire=False)
    ((raw_id, _),) = await redis.xrange(keys.events("s1"))
    return raw_id.decode()


@pytest.mark.parametrize("spelling", ["leading-zero-ms", "leading-zero-seq"])
async def test_resuming_after_an_item_id_spelled_with_leading_zeros_repeats_nothing(
    fake_redis: Any, keys: Keys, spelling: str
) -> None:
    entry_id = await _entry_of_three(fake_redis, keys)
    ms, _, seq = entry_id.partition("-")
    cursor = f"0{ms}-{seq}.1" if spelling == "leading-zero-ms" else f"{ms}-0{seq}.1"
    reader = StreamReader(fake_redis, keys)
    got = [e async for e in reader.tail("s1", after=cursor, follow=False)]
    assert payloads(got) == [2]
    lane = await TreeReader(fake_redis, keys).lane("s1", "r1", after=cursor)
    assert payloads(lane.entries) == [2]
