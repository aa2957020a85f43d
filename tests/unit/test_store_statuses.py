"""`statuses_call`: the queued entries of a batch of forks, in one script call."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.runs import RunStatus, StatusEntry
from orchestrator.store.connection import run_scripts
from orchestrator.store.streams import StreamReader, statuses_call

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
