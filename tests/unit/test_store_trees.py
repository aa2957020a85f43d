"""TreeReader on fakeredis: a run tree's records level by level, one scan of the stream
counting each agent's entries and waits, and one agent's lane between two ids."""

from __future__ import annotations

import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from orchestrator.events import CustomEvent, EventOrigin, EventYield
from orchestrator.keys import Keys
from orchestrator.runs import ForkInfo, RunRecord, RunStatus, StatusEntry, fork_run_id
from orchestrator.store.forks import ForkTable
from orchestrator.store.runs import RunStore
from orchestrator.store.streams import EventPublisher
from orchestrator.store.trees import TreeReader, stream_id_ms

pytestmark = pytest.mark.timeout(10)

SESSION = "s1"
ROOT = "root"


def output(call: str, seq: int, data: Any = None) -> EventYield:
    return EventYield(
        event=CustomEvent(event_name="tick", data=data if data is not None else seq),
        origin=EventOrigin(session_id=SESSION, agent_call_id=call, event_seq=seq),
    )


async def publish(redis: Any, keys: Keys, run_id: str, *items: EventYield | StatusEntry) -> None:
    root = ROOT if run_id.startswith(ROOT) else run_id
    publisher = EventPublisher(redis, keys, session_id=SESSION, run_id=run_id, root_run_id=root)
    for item in items:
        if isinstance(item, StatusEntry):
            publisher.publish_status(item)
        else:
            publisher.publish(item)
    await publisher.close(expire=False)


async def make_fork(redis: Any, keys: Keys, parent: str, depth: int, key: str) -> str:
    allocation = await ForkTable(redis, keys).allocate(SESSION, parent, key, limit=10)
    assert allocation is not None
    run_id = fork_run_id(ROOT, allocation.fork_id)
    fork = ForkInfo(
        fork_id=allocation.fork_id,
        root_run_id=ROOT,
        parent_run_id=parent,
        depth=depth,
        fork_seq=allocation.seq,
    )
    await RunStore(redis, keys).create(
        RunRecord(run_id=run_id, session_id=SESSION, agent="m:f", fork=fork)
    )
    return run_id


async def make_tree(redis: Any, keys: Keys) -> tuple[RunRecord, list[str]]:
    """root -> fork_1 -> fork_3, root -> fork_2; records and children lists."""
    root = RunRecord(run_id=ROOT, session_id=SESSION, agent="m:f")
    await RunStore(redis, keys).create(root)
    first = await make_fork(redis, keys, ROOT, 1, "a")
    second = await make_fork(redis, keys, ROOT, 1, "b")
    grandchild = await make_fork(redis, keys, first, 2, "c")
    return root, [first, second, grandchild]


async def test_records_come_parents_first_and_forks_in_spawn_order(
    fake_redis: Any, keys: Keys
) -> None:
    root, (first, second, grandchild) = await make_tree(fake_redis, keys)
    records = await TreeReader(fake_redis, keys).records(root)
    assert [r.run_id for r in records] == [ROOT, first, second, grandchild]


async def test_records_stop_at_max_agents(fake_redis: Any, keys: Keys) -> None:
    root, _ = await make_tree(fake_redis, keys)
    records = await TreeReader(fake_redis, keys, max_agents=2).records(root)
    assert len(records) == 2


async def test_the_scan_counts_each_agents_entries_and_skips_other_trees(
    fake_redis: Any, keys: Keys
) -> None:
    _, (first, _, grandchild) = await make_tree(fake_redis, keys)
    await publish(fake_redis, keys, ROOT, output(ROOT, 0), output(ROOT, 1))
    await publish(
        fake_redis,
        keys,
        first,
        StatusEntry(run_id=first, status=RunStatus.QUEUED),
        output(first, 0),
        StatusEntry(run_id=first, status=RunStatus.COMPLETED),
    )
    await publish(fake_redis, keys, grandchild, output(grandchild, 0))
    await publish(fake_redis, keys, "another-turn", output("another-turn", 0))

    scan = await TreeReader(fake_redis, keys).scan(SESSION, ROOT)
    assert {run: a.entries for run, a in scan.agents.items()} == {
        ROOT: 2,
        first: 3,
        grandchild: 1,
    }
    assert scan.entries == 6
    raw = await fake_redis.xrange(keys.events(SESSION))
    assert scan.last_id == raw[-1][0].decode()  # the other turn's: tail after it
    assert scan.agents[first].first_id == raw[2][0].decode()
    assert [s for s, _ in scan.agents[first].statuses] == [RunStatus.QUEUED, RunStatus.COMPLETED]


async def test_a_wait_lasts_from_the_waiting_status_to_the_agents_next_entry(
    fake_redis: Any, keys: Keys
) -> None:
    began = time.time() - 5
    await publish(
        fake_redis, keys, ROOT, StatusEntry(run_id=ROOT, status=RunStatus.WAITING, at=began)
    )
    scan = await TreeReader(fake_redis, keys).scan(SESSION, ROOT)
    assert scan.agents[ROOT].waits == [(began, None)]  # still waiting

    await publish(fake_redis, keys, ROOT, output(ROOT, 5))
    scan = await TreeReader(fake_redis, keys).scan(SESSION, ROOT)
    ((start, end),) = scan.agents[ROOT].waits
    resumed = (await fake_redis.xrange(keys.events(SESSION)))[-1][0].decode()
    assert start == began
    assert end == stream_id_ms(resumed) / 1000


async def test_a_malformed_status_entry_is_skipped_with_a_warning(
    fake_redis: Any, keys: Keys
) -> None:
    await publish(fake_redis, keys, ROOT, output(ROOT, 0))
    await fake_redis.xadd(
        keys.events(SESSION), {"v": "1", "kind": "status", "run": ROOT, "data": "{nope"}
    )
    with capture_logs() as logs:
        scan = await TreeReader(fake_redis, keys).scan(SESSION, ROOT)
    assert scan.agents[ROOT].entries == 1
    assert [e["event"] for e in logs] == ["stream.malformed_entry"]


async def test_the_scan_pages_through_a_long_stream(fake_redis: Any, keys: Keys) -> None:
    await publish(fake_redis, keys, ROOT, *(output(ROOT, i) for i in range(4500)))
    scan = await TreeReader(fake_redis, keys).scan(SESSION, ROOT)
    assert scan.agents[ROOT].entries == 4500


async def test_a_lane_holds_one_agents_own_entries_in_pages(fake_redis: Any, keys: Keys) -> None:
    _, (first, _, grandchild) = await make_tree(fake_redis, keys)
    await publish(fake_redis, keys, first, output(first, 0, "a"))
    await publish(fake_redis, keys, grandchild, output(grandchild, 0, "not mine"))
    await publish(fake_redis, keys, first, output(first, 1, "b"), output(first, 2, "c"))
    reader = TreeReader(fake_redis, keys)

    whole = await reader.lane(SESSION, first)
    assert [e.output.event.data for e in whole.entries] == ["a", "b", "c"]  # type: ignore[union-attr]
    assert whole.next_after is None

    page = await reader.lane(SESSION, first, limit=2)
    assert len(page.entries) == 2
    assert page.next_after == page.entries[-1].id
    rest = await reader.lane(SESSION, first, after=page.next_after)
    assert [e.id for e in page.entries + rest.entries] == [e.id for e in whole.entries]

    upto = await reader.lane(SESSION, first, upto=whole.entries[1].id)
    assert [e.id for e in upto.entries] == [e.id for e in whole.entries[:2]]
