"""A v2 entry's item count `n` is untrusted: one that is not ASCII digits ("²", "①")
makes the entry malformed, skipped with a warning like any other bad count; every reader
of the session (a tail, a page, the tree view, a lane) reads on, and a cursor spelled so
is a clear error."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import OrchestratorError, PayloadError
from orchestrator.keys import Keys
from orchestrator.store.streams import StreamReader, decode_items
from orchestrator.store.trees import TreeReader
from tests.fixtures_redis import event_output, payloads

pytestmark = pytest.mark.timeout(10)


def _v1(i: int) -> dict[str, str]:
    return {"v": "1", "kind": "event", "run": "r1", "data": event_output(i).model_dump_json()}


def _v2_bad_count(count: str) -> dict[str, str]:
    fields = {"v": "2", "n": count}
    for i in range(2):
        fields |= {f"k{i}": "event", f"r{i}": "r1", f"d{i}": event_output(10 + i).model_dump_json()}
    return fields


async def _stream(redis: Any, keys: Keys, count: str) -> None:
    stream = keys.events("s1")
    await redis.xadd(stream, _v1(0))
    await redis.xadd(stream, _v2_bad_count(count))
    await redis.xadd(stream, _v1(1))


@pytest.mark.parametrize("count", ["²", "①"])
def test_decode_items_says_payload_error_for_a_count_that_is_not_a_number(count: str) -> None:
    with pytest.raises(PayloadError):
        decode_items("1-0", _v2_bad_count(count))


@pytest.mark.parametrize("count", ["²", "①"])
async def test_a_tail_skips_an_entry_with_a_unicode_digit_count_and_reads_on(
    fake_redis: Any, keys: Keys, count: str
) -> None:
    await _stream(fake_redis, keys, count)
    reader = StreamReader(fake_redis, keys)
    got = [e async for e in reader.tail("s1", follow=False)]
    assert payloads(got) == [0, 1]
    page = await reader.read_page("s1")
    assert payloads(page.entries) == [0, 1]


async def test_the_tree_view_and_a_lane_survive_an_entry_with_a_unicode_digit_count(
    fake_redis: Any, keys: Keys
) -> None:
    await _stream(fake_redis, keys, "²")
    trees = TreeReader(fake_redis, keys)
    scan = await trees.scan("s1", "r1")
    assert scan.agents["r1"].outputs == 2
    lane = await trees.lane("s1", "r1")
    assert payloads(lane.entries) == [0, 1]


async def test_a_cursor_with_a_non_ascii_digit_item_index_is_a_clear_error_not_a_value_error(
    fake_redis: Any, keys: Keys
) -> None:
    """`orchestrator tail --from` / `Client.tail(from_id=)` take any string: "1-0.²" must be
    refused like "1-0.x" (a StoreError naming the bad id), not crash with ValueError."""
    await _stream(fake_redis, keys, "2")
    reader = StreamReader(fake_redis, keys)
    with pytest.raises(OrchestratorError):
        [e async for e in reader.tail("s1", after="1-0.²", follow=False)]
