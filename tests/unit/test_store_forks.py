"""Fork bookkeeping in Redis (fakeredis): fork numbering, suspend/resume of a gathering
run, parked leases, and the reader's view of a fork tree."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.runs import ForkInfo, RunRecord, RunStatus, StatusEntry, StreamEntry, TreeProgress
from orchestrator.store.forks import ForkTable
from orchestrator.store.runs import LeaseTable, RunStore

pytestmark = pytest.mark.timeout(10)


def _fork(run_id: str, parent: str = "root", **kw: Any) -> RunRecord:
    fork_id = run_id.split(".")[-1]
    info = ForkInfo(fork_id=fork_id, root_run_id="root", parent_run_id=parent, depth=1, fork_seq=1)
    return RunRecord(run_id=run_id, session_id="s", agent="m:a", fork=info, **kw)


async def test_fork_ids_count_per_session_and_a_spawn_key_gets_one_id(
    fake_redis: Any, keys: Keys
) -> None:
    table = ForkTable(fake_redis, keys)
    first = await table.allocate("s", "root", "call_1#0", limit=3)
    again = await table.allocate("s", "root", "call_1#0", limit=3)
    other = await table.allocate("s", "child", "call_9#0", limit=3)
    assert first is not None
    assert again is not None
    assert other is not None
    assert (first.fork_id, first.seq, first.created) == ("fork_1", 1, True)
    assert (again.fork_id, again.seq, again.created) == ("fork_1", 1, False)
    assert (other.fork_id, other.seq) == ("fork_2", 1)  # numbered per session
    assert await table.children("s", "root") == ["fork_1"]


async def test_the_fan_out_limit_refuses_new_spawns_but_not_known_ones(
    fake_redis: Any, keys: Keys
) -> None:
    table = ForkTable(fake_redis, keys)
    assert await table.allocate("s", "root", "a", limit=2)
    assert await table.allocate("s", "root", "b", limit=2)
    assert await table.allocate("s", "root", "c", limit=2) is None
    known = await table.allocate("s", "root", "a", limit=2)
    assert known is not None
    assert known.fork_id == "fork_1"


async def test_a_batch_of_spawns_is_allocated_as_if_one_by_one(fake_redis: Any, keys: Keys) -> None:
    """Known keys keep their fork, new ones are numbered in order up to the limit, a key
    repeated in the batch gets one fork, and the parents' batches share the counter."""
    table = ForkTable(fake_redis, keys)
    assert await table.allocate("s", "root", "a", limit=4)
    got = await table.allocate_batches(
        "s", [("root", ["b", "a", "c", "b", "d", "e"]), ("child", ["x"])], limit=4
    )
    root = [(a.fork_id, a.seq, a.created) if a else None for a in got[0]]
    assert root == [
        ("fork_2", 2, True),
        ("fork_1", 1, False),
        ("fork_3", 3, True),
        ("fork_2", 2, False),
        ("fork_4", 4, True),
        None,  # over the limit of 4
    ]
    (child,) = got[1]
    assert child is not None
    assert (child.fork_id, child.seq, child.created) == ("fork_5", 1, True)
    assert await table.children("s", "root") == ["fork_1", "fork_2", "fork_3", "fork_4"]
    again = await table.allocate_many("s", "root", ["e", "d", "a"], limit=4)
    assert [(a.fork_id, a.created) if a else None for a in again] == [
        None,
        ("fork_4", False),
        ("fork_1", False),
    ]
    assert await table.allocated("s") == 5


async def test_a_batch_larger_than_one_script_call_keeps_its_order(
    fake_redis: Any, keys: Keys
) -> None:
    table = ForkTable(fake_redis, keys)
    spawn_keys = [f"call#{i}" for i in range(600)]
    got = await table.allocate_many("s", "root", spawn_keys, limit=550)
    numbers = [a.number if a else None for a in got]
    assert numbers == [*range(1, 551), *([None] * 50)]
    assert len(await table.children("s", "root")) == 550


async def test_a_run_suspends_only_while_a_fork_it_waits_for_is_live(
    fake_redis: Any, keys: Keys
) -> None:
    runs = RunStore(fake_redis, keys)
    await runs.create(
        RunRecord(run_id="root", session_id="s", agent="m:a", status=RunStatus.RUNNING)
    )
    await runs.create(_fork("root.fork_1", status=RunStatus.COMPLETED))
    await runs.create(_fork("root.fork_2", status=RunStatus.RUNNING))

    assert not await runs.suspend("root", attempt=1, segment=0, waiting_for=["root.fork_1"])
    assert not await runs.suspend("root", attempt=2, segment=0, waiting_for=["root.fork_2"])
    both = ["root.fork_1", "root.fork_2"]
    assert await runs.suspend("root", attempt=1, segment=0, waiting_for=both)
    record = await runs.get("root")
    assert record.status is RunStatus.WAITING
    assert record.waiting_for == ["root.fork_2"]
    assert await runs.waiting() == ["root"]

    assert await runs.ready_to_resume("root") is None
    await runs.transition("root.fork_2", from_status=RunStatus.RUNNING, to=RunStatus.ERROR)
    ready = await runs.ready_to_resume("root")
    assert ready is not None
    assert ready.segment == 0


async def test_a_parked_lease_is_not_reaped_and_the_same_attempt_takes_it_back(
    fake_redis: Any, keys: Keys
) -> None:
    leases = LeaseTable(fake_redis, keys)
    assert await leases.renew("r", attempt=1, worker_id="w1", ttl_s=0.001)
    assert not await leases.park("r", 1, "w2"), "another worker's lease"
    assert await leases.park("r", 1, "w1")
    assert await leases.expired(now_ms=10**15) == []
    assert await leases.renew("r", attempt=1, worker_id="w2", ttl_s=5)


def _status(run_id: str, status: RunStatus, root: str = "root") -> StreamEntry:
    return StreamEntry(
        id="1-0",
        run_id=run_id,
        root_run_id=root,
        kind="status",
        status=StatusEntry(run_id=run_id, status=status),
    )


def test_a_tree_is_done_when_the_root_and_every_known_fork_have_ended() -> None:
    tree = TreeProgress("root")
    tree.add(_status("root.fork_1", RunStatus.QUEUED))
    tree.add(_status("root", RunStatus.COMPLETED, root="root"))
    assert tree.root_ended
    assert not tree.done
    tree.add(_status("other", RunStatus.ABORTED, root="other"))
    assert not tree.done
    tree.add(_status("root.fork_1", RunStatus.COMPLETED))
    assert tree.done
    assert tree.forks_ended == 1
