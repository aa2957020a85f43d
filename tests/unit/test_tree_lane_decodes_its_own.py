"""A lane (one agent's own outputs) decodes only that agent's outputs, in v1 and v2
entries alike: other agents' items are not decoded (decoding every event of a big tree
costs seconds) and their malformed ones raise no warning in this lane."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

import orchestrator.store.streams as streams
from orchestrator.keys import Keys
from orchestrator.store.streams import EventPublisher
from orchestrator.store.trees import TreeReader
from tests.fixtures_redis import event_output, payloads

pytestmark = pytest.mark.timeout(10)


async def _fan_out(redis: Any, keys: Keys, per: int) -> None:
    for run in range(20):
        publisher = EventPublisher(
            redis,
            keys,
            session_id="s1",
            run_id=f"root.f{run}",
            root_run_id="root",
            items_per_entry=per,
        )
        for i in range(10):
            publisher.publish(event_output(i))
        await publisher.close(expire=False)


@pytest.mark.parametrize("per", [1, 64])
async def test_a_lane_decodes_only_its_own_agents_outputs(
    fake_redis: Any, keys: Keys, per: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _fan_out(fake_redis, keys, per)
    decoded = 0
    real = streams.output_from_json

    def counting(data: Any) -> Any:
        nonlocal decoded
        decoded += 1
        return real(data)

    monkeypatch.setattr(streams, "output_from_json", counting)
    lane = await TreeReader(fake_redis, keys).lane("s1", "root.f7")
    assert payloads(lane.entries) == list(range(10))
    assert decoded == 10  # per=64: 200 (every output of the 20 agents)


async def test_a_lane_does_not_warn_about_other_agents_malformed_outputs(
    fake_redis: Any, keys: Keys
) -> None:
    stream = keys.events("s1")
    good = event_output(1).model_dump_json()
    # Another agent's entry of two items, the first of which does not decode.
    await fake_redis.xadd(
        stream,
        {
            "v": "2",
            "n": "2",
            "k0": "event",
            "r0": "other",
            "d0": "{",
            "k1": "event",
            "r1": "other",
            "d1": good,
        },
    )
    await fake_redis.xadd(stream, {"v": "1", "kind": "event", "run": "other", "data": "{"})
    await fake_redis.xadd(stream, {"v": "1", "kind": "event", "run": "mine", "data": good})
    with capture_logs() as logs:
        lane = await TreeReader(fake_redis, keys).lane("s1", "mine")
    assert payloads(lane.entries) == [1]
    # The v1 entry of "other" is not even looked at; its v2 entry is decoded and warned about.
    assert [log for log in logs if log["event"] == "stream.malformed_entry"] == []
