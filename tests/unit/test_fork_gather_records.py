"""A gather reads its forks' records for their results only: the same ForkResults as from
whole records, a corrupt or missing record a lost fork, and the records this process
wrote read back without decoding them again."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.runs import ForkInfo, RunRecord, RunRequest, RunResultView, RunStatus
from orchestrator.settings import Settings
from orchestrator.store import runs as runs_module
from orchestrator.store.forks import ForkTable
from orchestrator.store.memory import RedisMemoryStore
from orchestrator.store.queue import JobQueue
from orchestrator.store.runs import RunStore
from workers.forks import RedisForkBackend, result_of

pytestmark = pytest.mark.timeout(10)

_HISTORY = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "fan out"}]


def _info(number: int) -> ForkInfo:
    return ForkInfo(
        fork_id=f"fork_{number}",
        root_run_id="root",
        parent_run_id="root",
        depth=1,
        fork_seq=number,
        source_memory_key="mem",
        memory_key=f"mem::fork::{number}",
        tool_name="spawn",
        tool_call_id="call_1",
    )


def _fork(number: int, **kw: Any) -> RunRecord:
    info = _info(number)
    run_id = f"root.fork_{number}"
    request = RunRequest(run_id=run_id, session_id="s", agent="m:a", history=_HISTORY, fork=info)
    return RunRecord(
        run_id=run_id,
        session_id="s",
        agent="m:a",
        fork=info,
        request=request.model_dump(mode="json"),
        **kw,
    )


def _backend(fake_redis: Any, keys: Keys) -> RedisForkBackend:
    request = RunRequest(run_id="root", session_id="s", agent="m:a")
    return RedisForkBackend(
        fake_redis,
        keys,
        Settings(),
        JobQueue(fake_redis, keys),
        request=request,
        tenant=None,
        memory=RedisMemoryStore(fake_redis, keys),
    )


async def _spawned(fake_redis: Any, keys: Keys, count: int) -> None:
    table = ForkTable(fake_redis, keys)
    got = await table.allocate_many("s", "call_root", [f"k{i}" for i in range(count)], limit=99)
    assert [a.fork_id if a else None for a in got] == [f"fork_{i + 1}" for i in range(count)]


def _as_written_elsewhere(record: RunRecord) -> str:
    """The record as another process would store it (not what this one last wrote)."""
    runs_module._LAST_WRITTEN.pop(record.run_id, None)
    return record.model_dump_json()


async def test_a_gather_gives_the_results_whole_records_give(fake_redis: Any, keys: Keys) -> None:
    """Ended forks' results (read from their result fields alone), forks still running,
    and the history only when asked for: as `result_of` answers for whole records."""
    await _spawned(fake_redis, keys, 4)
    messages = [*_HISTORY, {"role": "assistant", "content": "done"}]
    ended = [
        _fork(1, status=RunStatus.COMPLETED, response="r1", messages=messages, usage={"n": 1}),
        _fork(2, status=RunStatus.ERROR, error="boom", error_type="ToolError"),
        _fork(3, status=RunStatus.ABORTED, abort_reason="stop", messages=messages),
    ]
    for record in [*ended, _fork(4, status=RunStatus.RUNNING)]:
        await fake_redis.set(keys.run(record.run_id), _as_written_elsewhere(record))
    backend = _backend(fake_redis, keys)
    for include_history in (False, True):
        results, running = await backend.collect("call_root", None, include_history)
        assert running == ["fork_4"]
        assert results == {
            r.fork.fork_id: result_of(r, include_history) for r in ended if r.fork is not None
        }
    assert results["fork_1"]["history"] == messages
    assert results["fork_1"]["history_count"] == 3
    assert results["fork_3"]["status"] == "aborted"
    assert results["fork_3"]["error_message"] == "stop"


@pytest.mark.parametrize(
    "stored",
    [
        "{not json",
        "[]",
        # An ended record whose result fields are corrupt.
        json.dumps({"run_id": "root.fork_1", "status": "completed", "response": 12}),
        json.dumps({"run_id": "root.fork_1", "status": "finished-ish"}),
        # A live record corrupt in any field counts as gone (as a suspend counts it).
        json.dumps({"run_id": "root.fork_1", "status": "running", "attempt": "many"}),
        None,  # missing (expired)
    ],
)
async def test_a_corrupt_or_missing_fork_record_is_a_lost_fork_in_a_gather(
    fake_redis: Any, keys: Keys, stored: str | None
) -> None:
    await _spawned(fake_redis, keys, 2)
    runs_module._LAST_WRITTEN.pop("root.fork_1", None)
    if stored is not None:
        await fake_redis.set(keys.run("root.fork_1"), stored)
    await fake_redis.set(
        keys.run("root.fork_2"),
        _as_written_elsewhere(_fork(2, status=RunStatus.COMPLETED, response="fine")),
    )
    results, running = await _backend(fake_redis, keys).collect("call_root", None, False)
    assert running == []
    assert results["fork_1"]["status"] == "error"
    assert results["fork_1"]["error_type"] == "ForkLost"
    assert results["fork_2"]["status"] == "completed"
    assert results["fork_2"]["response"] == "fine"


async def test_records_this_process_wrote_are_read_back_without_a_decode(
    fake_redis: Any, keys: Keys
) -> None:
    """A record whose stored JSON is what this process last wrote is that record; once
    another writer changed it, it is decoded again."""
    runs = RunStore(fake_redis, keys)
    record = _fork(1, status=RunStatus.RUNNING)
    assert await runs.create_many([record]) == [True]
    assert (await runs.get_many(["root.fork_1"]))["root.fork_1"] is record
    assert (await runs.results_many(["root.fork_1"]))["root.fork_1"] is record
    # A suspend reads the fork's status from what this process wrote, too.
    await runs.create(RunRecord(run_id="root", session_id="s", agent="m:a", status="running"))
    assert await runs.suspend("root", attempt=1, segment=0, waiting_for=["root.fork_1"])

    ended = _fork(1, status=RunStatus.COMPLETED, response="elsewhere")
    await fake_redis.set(keys.run("root.fork_1"), ended.model_dump_json())
    again = await runs.get_many(["root.fork_1"])
    assert again["root.fork_1"] == ended
    assert again["root.fork_1"] is not record
    view = (await runs.results_many(["root.fork_1"]))["root.fork_1"]
    assert isinstance(view, RunResultView)
    assert view.response == "elsewhere"
    assert result_of(view, True) == result_of(ended, True)
