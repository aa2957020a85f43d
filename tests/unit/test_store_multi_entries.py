"""Several outputs in one stream entry (v2): a publisher's batch, a run's end and a batch
of forks' statuses are one XADD each; readers yield every output with its own id, resume
after any of them (mid-entry too), read v1 and v2 entries side by side and skip what does
not decode."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from orchestrator.events import CustomEvent, EventOrigin, EventYield, ResponseYield
from orchestrator.keys import Keys
from orchestrator.runs import ForkInfo, RunRecord, RunStatus, StatusEntry, StreamEntry
from orchestrator.settings import Settings
from orchestrator.store.connection import run_scripts
from orchestrator.store.lifecycle import end_run
from orchestrator.store.runs import LeaseTable, RunStore
from orchestrator.store.streams import EventPublisher, StreamReader, statuses_call
from orchestrator.store.trees import TreeReader
from tests.fixtures_redis import event_output, payloads

pytestmark = pytest.mark.timeout(10)


def _publisher(redis: Any, keys: Keys, run_id: str = "r1", **kw: Any) -> EventPublisher:
    kw.setdefault("items_per_entry", 64)
    return EventPublisher(redis, keys, session_id="s1", run_id=run_id, **kw)


async def _publish(redis: Any, keys: Keys, first: int, count: int, **kw: Any) -> None:
    publisher = _publisher(redis, keys, **kw)
    for i in range(first, first + count):
        publisher.publish(event_output(i))
    await publisher.close(expire=False)


async def _all(redis: Any, keys: Keys, **kw: Any) -> list[StreamEntry]:
    return [e async for e in StreamReader(redis, keys).tail("s1", follow=False, **kw)]


async def _raw_ids(redis: Any, keys: Keys) -> list[str]:
    return [raw_id.decode() for raw_id, _ in await redis.xrange(keys.events("s1"))]


def _v1(i: int) -> dict[str, str]:
    return {"v": "1", "kind": "event", "run": "r1", "data": event_output(i).model_dump_json()}


async def test_a_batch_of_events_is_one_entry_read_back_as_each_output_with_its_own_id(
    fake_redis: Any, keys: Keys
) -> None:
    await _publish(fake_redis, keys, 0, 5)
    (entry_id,) = await _raw_ids(fake_redis, keys)
    entries = await _all(fake_redis, keys)
    assert payloads(entries) == [0, 1, 2, 3, 4]
    # Item i is "<entry>.<i>"; the last one is the plain entry id.
    ids = [f"{entry_id}.{i}" for i in range(4)] + [entry_id]
    assert [e.id for e in entries] == ids
    assert [e.output.stream_id for e in entries if e.output is not None] == ids
    page = await StreamReader(fake_redis, keys).read_page("s1")
    assert [e.id for e in page.entries] == ids
    assert page.last_id == entry_id


async def test_a_batch_longer_than_an_entry_holds_takes_several_entries_in_order(
    fake_redis: Any, keys: Keys
) -> None:
    await _publish(fake_redis, keys, 0, 150)
    assert await fake_redis.xlen(keys.events("s1")) == 3  # 64 + 64 + 22
    entries = await _all(fake_redis, keys)
    assert payloads(entries) == list(range(150))
    assert len({e.id for e in entries}) == 150


async def test_one_output_per_entry_stays_a_plain_v1_entry(fake_redis: Any, keys: Keys) -> None:
    await _publish(fake_redis, keys, 0, 3, items_per_entry=1)
    raw = await fake_redis.xrange(keys.events("s1"))
    assert [fields[b"v"] for _, fields in raw] == [b"1", b"1", b"1"]
    assert [e.id for e in await _all(fake_redis, keys)] == [i.decode() for i, _ in raw]


async def _mixed_stream(redis: Any, keys: Keys) -> list[StreamEntry]:
    """v1, a 3-item v2, v1 (an older writer's), a 4-item v2: 0..9 in order."""
    await _publish(redis, keys, 0, 1)
    await _publish(redis, keys, 1, 3)
    await redis.xadd(keys.events("s1"), _v1(4))
    await _publish(redis, keys, 5, 4)
    await _publish(redis, keys, 9, 1, items_per_entry=1)
    return await _all(redis, keys)


async def test_a_stream_of_v1_and_v2_entries_reads_in_order(fake_redis: Any, keys: Keys) -> None:
    entries = await _mixed_stream(fake_redis, keys)
    assert payloads(entries) == list(range(10))
    assert len(await _raw_ids(fake_redis, keys)) == 5


async def test_reading_after_any_output_id_yields_exactly_the_rest(
    fake_redis: Any, keys: Keys
) -> None:
    entries = await _mixed_stream(fake_redis, keys)
    ids = [e.id for e in entries]
    reader = StreamReader(fake_redis, keys)
    for cut, after in enumerate(ids):
        rest = ids[cut + 1 :]
        assert [e.id for e in await reader.read("s1", after=after)] == rest, after
        tailed = [e async for e in reader.tail("s1", after=after, follow=False)]
        assert [e.id for e in tailed] == rest, after
        # In pages of one entry at a time too.
        paged = [e async for e in reader.tail("s1", after=after, follow=False, count=1)]
        assert [e.id for e in paged] == rest, after


async def test_a_blocking_read_after_a_mid_entry_id_returns_the_rest_at_once(
    fake_redis: Any, keys: Keys
) -> None:
    await _publish(fake_redis, keys, 0, 3)
    entries = await _all(fake_redis, keys)
    rest = await StreamReader(fake_redis, keys).read("s1", after=entries[0].id, block_ms=50)
    assert payloads(rest) == [1, 2]


async def test_malformed_v2_entries_and_items_are_skipped_with_a_warning(
    fake_redis: Any, keys: Keys
) -> None:
    stream = keys.events("s1")
    good = event_output(0).model_dump_json()
    await fake_redis.xadd(stream, {"v": "2", "n": "x", "k0": "event", "r0": "r1", "d0": good})
    await fake_redis.xadd(stream, {"v": "2", "n": "99", "k0": "event", "r0": "r1", "d0": good})
    # A count above its items: the missing ones are skipped one by one.
    await fake_redis.xadd(stream, {"v": "2", "n": "3", "k0": "event", "r0": "r1", "d0": good})
    await fake_redis.xadd(stream, {"v": "2"})
    bad_items = {
        **{"v": "2", "n": "4", "k0": "event", "r0": "r1", "d0": event_output(1).model_dump_json()},
        **{"k1": "event", "r1": "r1"},  # no data
        **{"k2": "bogus", "r2": "r1", "d2": good},
        **{"k3": "event", "r3": "r1", "d3": "{not json"},
        **{"k4": "event", "r4": "r1", "d4": event_output(2).model_dump_json()},
    }
    bad_items["n"] = "5"
    await fake_redis.xadd(stream, bad_items)
    await fake_redis.xadd(stream, {"v": "3", "kind": "event", "run": "r1", "data": good})
    await _publish(fake_redis, keys, 3, 2)
    with capture_logs() as logs:
        entries = await _all(fake_redis, keys)
        page = await StreamReader(fake_redis, keys).read("s1")
    assert payloads(entries) == payloads(page) == [0, 1, 2, 3, 4]
    warned = [log for log in logs if log["event"] == "stream.malformed_entry"]
    # 3 bad entries, 2 missing items, 3 bad items, 1 unknown version; read twice.
    assert len(warned) == 2 * 9


async def test_forks_statuses_in_one_entry_are_each_seen_with_their_own_run(
    fake_redis: Any, keys: Keys
) -> None:
    statuses = [
        (StatusEntry(run_id=f"root.fork_{i}", status=RunStatus.QUEUED), "root") for i in (1, 2, 3)
    ]
    statuses.append((StatusEntry(run_id="other", status=RunStatus.QUEUED), "other"))
    call = statuses_call(fake_redis, keys, statuses, session_id="s1", items_per_entry=64)
    await run_scripts(fake_redis, [call])
    assert await fake_redis.xlen(keys.events("s1")) == 1
    entries = await _all(fake_redis, keys)
    assert [(e.run_id, e.root_run_id) for e in entries] == [
        ("root.fork_1", "root"),
        ("root.fork_2", "root"),
        ("root.fork_3", "root"),
        ("other", "other"),
    ]
    assert [e.status.run_id for e in entries if e.status is not None] == [
        "root.fork_1",
        "root.fork_2",
        "root.fork_3",
        "other",
    ]
    mine = await _all(fake_redis, keys, run_id="root")
    assert [e.run_id for e in mine] == ["root.fork_1", "root.fork_2", "root.fork_3"]


async def test_a_runs_end_writes_its_last_batch_and_terminal_status_in_one_entry_once(
    fake_redis: Any, keys: Keys
) -> None:
    record = RunRecord(
        run_id="r1", session_id="s1", agent="pkg:agent", status=RunStatus.RUNNING, attempt=1
    )
    await RunStore(fake_redis, keys).create(record)
    assert await LeaseTable(fake_redis, keys).renew("r1", attempt=1, worker_id="w", ttl_s=60)
    publisher = _publisher(fake_redis, keys, attempt=1)
    await publisher.take_over()
    publisher.publish(event_output(0))
    publisher.publish(ResponseYield(response="done"))

    for _ in range(2):  # a repeated end writes nothing more
        await end_run(
            fake_redis,
            keys,
            Settings(),
            run_id="r1",
            session_id="s1",
            status=RunStatus.COMPLETED,
            attempt=1,
            release=True,
            drop_checkpoint=True,
            batch=await publisher.take_last(),
        )
    assert await fake_redis.xlen(keys.events("s1")) == 1
    entries = await _all(fake_redis, keys)
    assert [e.kind for e in entries] == ["event", "response", "status"]
    assert entries[-1].status is not None
    assert entries[-1].status.status is RunStatus.COMPLETED
    assert len({e.id for e in entries}) == 3


def _tick(run_id: str, seq: int) -> EventYield:
    return EventYield(
        event=CustomEvent(event_name="tick", data=f"{run_id}:{seq}"),
        origin=EventOrigin(session_id="s1", agent_call_id=run_id, event_seq=seq),
    )


async def test_a_tree_scan_counts_outputs_and_a_lane_pages_through_mid_entry_ids(
    fake_redis: Any, keys: Keys
) -> None:
    """The tree's view counts each agent's outputs, and each entry once, for the agent
    that wrote it (a batch of forks' statuses: their parent), so the entries add up to
    the stream's length."""
    fork = "root.fork_1"
    statuses = [
        (
            StatusEntry(
                run_id=f"root.fork_{n}",
                status=RunStatus.QUEUED,
                fork=ForkInfo(
                    fork_id=f"fork_{n}",
                    root_run_id="root",
                    parent_run_id="root",
                    depth=1,
                    fork_seq=n,
                ),
            ),
            "root",
        )
        for n in (1, 2)
    ]
    call = statuses_call(fake_redis, keys, statuses, session_id="s1", items_per_entry=64)
    await run_scripts(fake_redis, [call])
    root = _publisher(fake_redis, keys, "root")
    mine = _publisher(fake_redis, keys, fork, root_run_id="root")
    for seq in range(3):
        root.publish(_tick("root", seq))
        mine.publish(_tick(fork, seq))
    await root.close(expire=False)
    await mine.close(expire=False)

    scan = await TreeReader(fake_redis, keys).scan("s1", "root")
    assert {run: a.outputs for run, a in scan.agents.items()} == {
        fork: 4,
        "root.fork_2": 1,
        "root": 3,
    }
    assert {run: a.entries for run, a in scan.agents.items()} == {
        fork: 1,
        "root.fork_2": 0,
        "root": 2,
    }
    assert scan.entries == await fake_redis.xlen(keys.events("s1")) == 3
    assert [s for s, _ in scan.agents[fork].statuses] == [RunStatus.QUEUED]
    whole = await TreeReader(fake_redis, keys).lane("s1", fork)
    assert len(whole.entries) == 4
    every = [e.id for e in whole.entries]
    last = every[-1]
    assert every[-3:] == [f"{last}.0", f"{last}.1", last]  # the fork's batch: one entry
    for limit in (1, 2):
        pages: list[str] = []
        after = None
        while True:
            page = await TreeReader(fake_redis, keys).lane("s1", fork, after=after, limit=limit)
            pages += [e.id for e in page.entries]
            if page.next_after is None:
                break
            after = page.next_after
        assert pages == every
    upto = await TreeReader(fake_redis, keys).lane("s1", fork, upto=every[-2])
    assert [e.id for e in upto.entries] == every[:-1]
