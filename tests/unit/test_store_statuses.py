"""`statuses_call` (the queued entries of a batch of forks, in one script call) and where
a publisher's batch markers live."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.runs import RunStatus, StatusEntry
from orchestrator.store.connection import run_scripts
from orchestrator.store.streams import EventPublisher, StreamReader, statuses_call
from tests.fixtures_redis import event_output

pytestmark = pytest.mark.timeout(10)


async def test_statuses_of_several_runs_are_appended_in_order_with_their_roots(
    fake_redis: Any, keys: Keys
) -> None:
    statuses = [
        (StatusEntry(run_id=f"root.fork_{i}", status=RunStatus.QUEUED), "root") for i in (1, 2, 3)
    ]
    statuses.append((StatusEntry(run_id="other", status=RunStatus.QUEUED), "other"))
    call = statuses_call(fake_redis, keys, statuses, session_id="s1", ttl_s=60)
    assert await run_scripts(fake_redis, [call]) == [4]

    entries = [e async for e in StreamReader(fake_redis, keys).tail("s1", follow=False)]
    assert [(e.run_id, e.root_run_id, e.kind) for e in entries] == [
        ("root.fork_1", "root", "status"),
        ("root.fork_2", "root", "status"),
        ("root.fork_3", "root", "status"),
        ("other", "other", "status"),
    ]
    assert all(e.status is not None and e.status.status is RunStatus.QUEUED for e in entries)
    assert 0 < await fake_redis.ttl(keys.events("s1")) <= 60
    # Readers of one tree see only its runs.
    mine = [e async for e in StreamReader(fake_redis, keys).tail("s1", run_id="root", follow=False)]
    assert [e.run_id for e in mine] == ["root.fork_1", "root.fork_2", "root.fork_3"]


async def test_a_batch_marker_kept_where_earlier_builds_kept_it_still_stops_a_repeat(
    fake_redis: Any, keys: Keys
) -> None:
    """A named publisher whose batch 1 an earlier build delivered (its marker in the
    publishers hash) does not write that batch again; its own markers go to the seqs
    hash, with the batch's event_seqs, in one write."""
    await fake_redis.hset(keys.publishers("s1"), "end:r1", "1")
    again = EventPublisher(fake_redis, keys, session_id="s1", run_id="r1", publisher_id="end:r1")
    again.publish_status(StatusEntry(run_id="r1", status=RunStatus.COMPLETED))
    await again.flush()
    assert await fake_redis.xlen(keys.events("s1")) == 0

    fresh = EventPublisher(fake_redis, keys, session_id="s1", run_id="r2", publisher_id="end:r2")
    fresh.publish(event_output(0))
    await fresh.flush()
    assert await fake_redis.hgetall(keys.seqs("s1")) == {b"batch:end:r2": b"1", b"call-1": b"0"}
    assert await fake_redis.hget(keys.publishers("s1"), "end:r2") is None
    repeat = EventPublisher(fake_redis, keys, session_id="s1", run_id="r2", publisher_id="end:r2")
    repeat.publish(event_output(0))
    await repeat.flush()
    assert await fake_redis.xlen(keys.events("s1")) == 1
