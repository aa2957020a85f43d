"""`RunStore.list` lists newest first, also among runs submitted within one millisecond:
a fan-out's forks (each `submitted_at=time.time()` as it is spawned, ids
`<root>.fork_N`) list in the order they were spawned, not in string order of their ids
(fork_10 before fork_9). Whole-millisecond index scores, tried in round 8, broke this."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.runs import ForkInfo, RunRecord
from orchestrator.store.runs import RunStore

pytestmark = pytest.mark.timeout(10)

T = 1_700_000_000.1  # seconds


def _fork(root: str, n: int, submitted_at: float) -> RunRecord:
    info = ForkInfo(fork_id=f"fork_{n}", root_run_id=root, parent_run_id=root, depth=1, fork_seq=n)
    return RunRecord(
        run_id=f"{root}.fork_{n}",
        session_id="s1",
        agent="pkg:agent",
        submitted_at=submitted_at,
        fork=info,
    )


async def test_runs_submitted_in_one_millisecond_still_list_newest_first(
    fake_redis: Any, keys: Keys
) -> None:
    runs = RunStore(fake_redis, keys)
    # fork_9 spawned first, fork_10 0.3 ms later (a fan-out spawns many per millisecond).
    assert await runs.create_many([_fork("root", 9, T + 0.0001), _fork("root", 10, T + 0.0004)])
    listed = [r.run_id for r in await runs.list(include_forks=True)]
    assert listed == ["root.fork_10", "root.fork_9"]


async def test_root_runs_submitted_in_one_millisecond_list_newest_first(
    fake_redis: Any, keys: Keys
) -> None:
    runs = RunStore(fake_redis, keys)
    older = RunRecord(run_id="zz-older", session_id="s1", agent="pkg:agent", submitted_at=T)
    newer = RunRecord(
        run_id="aa-newer", session_id="s2", agent="pkg:agent", submitted_at=T + 0.0005
    )
    await runs.create(older)
    await runs.create(newer)
    assert [r.run_id for r in await runs.list()] == ["aa-newer", "zz-older"]
