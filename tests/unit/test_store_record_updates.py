"""Run records changed field by field, and fork statuses read without whole records:
the same answers as decoding and validating whole records."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.errors import PayloadError
from orchestrator.keys import Keys
from orchestrator.runs import ForkInfo, RunRecord, RunStatus, RunStatusView
from orchestrator.store.runs import RunStore

pytestmark = pytest.mark.timeout(10)

_REQUEST = {
    "run_id": "root.fork_1",
    "session_id": "s",
    "agent": "m:a",
    "history": [{"role": "user", "content": "hi", "tool_calls": [{"id": "c"}]}],
}


def _fork(run_id: str, **kw: Any) -> RunRecord:
    number = int(run_id.rsplit("_", 1)[1])
    fork = ForkInfo(
        fork_id=f"fork_{number}",
        root_run_id="root",
        parent_run_id="root",
        depth=1,
        fork_seq=number,
    )
    return RunRecord(run_id=run_id, session_id="s", agent="m:a", fork=fork, **kw)


def test_an_updated_record_is_the_record_validated_whole() -> None:
    record = _fork("root.fork_1", request=_REQUEST, messages=[{"role": "user", "content": "x"}])
    fields = {"status": "running", "worker_id": "w", "started_at": 3, "waiting_for": ("a",)}
    updated = record.updated(fields)
    whole = RunRecord.model_validate({**record.model_dump(), **fields})
    assert updated == whole
    assert updated.model_dump_json() == whole.model_dump_json()
    assert updated.status is RunStatus.RUNNING
    assert updated.started_at == 3.0
    assert record.status is RunStatus.QUEUED
    assert record.worker_id is None


def test_a_bad_value_fails_the_update_and_leaves_the_record() -> None:
    record = _fork("root.fork_1")
    with pytest.raises(ValidationError):
        record.updated({"worker_id": "w", "status": "finished-ish"})
    with pytest.raises(ValidationError):
        record.updated({"attempt": "many"})
    with pytest.raises(ValueError, match="nope"):
        record.updated({"nope": 1})
    assert record.worker_id is None
    assert record.status is RunStatus.QUEUED


def test_a_status_view_reads_a_stored_record_and_refuses_garbage() -> None:
    raw = _fork("root.fork_1", status=RunStatus.COMPLETED, request=_REQUEST).model_dump_json()
    assert RunStatusView.of_json("r", raw).status is RunStatus.COMPLETED
    for garbage in ("{garbage", "[]", json.dumps({"status": "finished-ish"})):
        with pytest.raises(PayloadError, match="'r'"):
            RunStatusView.of_json("r", garbage)


async def test_a_live_fork_with_a_corrupt_record_is_not_waited_for(
    fake_redis: Any, keys: Keys
) -> None:
    runs = RunStore(fake_redis, keys)
    await runs.create(RunRecord(run_id="root", session_id="s", agent="m:a", status="running"))
    await runs.create(_fork("root.fork_1", status=RunStatus.RUNNING))
    await runs.create(_fork("root.fork_2", status=RunStatus.RUNNING))
    both = ["root.fork_1", "root.fork_2"]
    assert await runs.suspend("root", attempt=1, segment=0, waiting_for=both)
    assert await runs.ready_to_resume("root") is None
    # A record whose status reads as live but whose other fields are corrupt counts as
    # gone (as a whole-record decode decided), for a gather and for a suspend alike.
    corrupt = {"run_id": "root.fork_1", "status": "running", "attempt": "many"}
    await fake_redis.set(keys.run("root.fork_1"), json.dumps(corrupt))
    await runs.transition("root.fork_2", from_status=RunStatus.RUNNING, to=RunStatus.COMPLETED)
    assert await runs.ready_to_resume("root") is not None
    await runs.create(RunRecord(run_id="other", session_id="s", agent="m:a", status="running"))
    assert not await runs.suspend("other", attempt=1, segment=0, waiting_for=["root.fork_1"])
