"""A run's end writes its terminal status entry in the same script as its terminal
record (`end_run`): one entry however often the end is repeated, and a reader woken by
the entry finds the run ended."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.runs import ForkInfo, RunRecord, RunStatus, StatusEntry
from orchestrator.settings import Settings
from orchestrator.store.lifecycle import announce_end, end_run
from orchestrator.store.runs import EndWrites, LeaseTable, RunStore
from orchestrator.store.streams import EventPublisher, StreamReader

pytestmark = pytest.mark.timeout(10)

_SETTINGS = Settings()


def _record(run_id: str = "r1", **kw: Any) -> RunRecord:
    kw.setdefault("agent", "pkg:agent")
    kw.setdefault("status", RunStatus.RUNNING)
    return RunRecord(run_id=run_id, session_id="s1", submitted_at=1000.0, **kw)


async def _end(redis: Any, keys: Keys, run_id: str = "r1", **kw: Any) -> RunRecord | None:
    return await end_run(
        redis,
        keys,
        _SETTINGS,
        run_id=run_id,
        session_id="s1",
        status=kw.pop("status", RunStatus.COMPLETED),
        **kw,
    )


async def _terminal_entries(redis: Any, keys: Keys) -> list[StatusEntry]:
    entries = await StreamReader(redis, keys).read("s1")
    return [e.status for e in entries if e.status is not None and e.status.status.terminal]


async def test_an_end_writes_the_terminal_entry_with_the_record(
    fake_redis: Any, keys: Keys
) -> None:
    await RunStore(fake_redis, keys).create(_record())
    ended = await _end(fake_redis, keys, status=RunStatus.ERROR, error="boom", error_type="X")
    assert ended is not None
    (entry,) = await _terminal_entries(fake_redis, keys)
    assert entry.run_id == "r1"
    assert entry.status is RunStatus.ERROR
    assert (entry.error, entry.error_type) == ("boom", "X")
    assert entry.at == ended.finished_at
    # The stream's retention starts with the terminal entry.
    retention = _SETTINGS.stream_retention_s
    assert 0 < await fake_redis.ttl(keys.events("s1")) <= retention
    assert 0 < await fake_redis.ttl(keys.seqs("s1")) <= retention


async def test_a_forks_terminal_entry_names_its_root(fake_redis: Any, keys: Keys) -> None:
    info = ForkInfo(
        fork_id="fork_1", parent_run_id="p", root_run_id="p", depth=1, fork_seq=1, memory_key="m"
    )
    await RunStore(fake_redis, keys).create(_record("p.fork_1", fork=info))
    assert await _end(fake_redis, keys, "p.fork_1") is not None
    entries = await StreamReader(fake_redis, keys).read("s1")
    assert [(e.run_id, e.root_run_id) for e in entries] == [("p.fork_1", "p")]


async def test_a_repeated_end_writes_one_terminal_entry(fake_redis: Any, keys: Keys) -> None:
    runs = RunStore(fake_redis, keys)
    await runs.create(_record(attempt=1))
    assert await _end(fake_redis, keys, attempt=1, release=True) is not None
    assert await _end(fake_redis, keys, attempt=1, release=True) is not None
    record = await runs.get("r1")
    await announce_end(fake_redis, keys, _SETTINGS, record)
    await announce_end(fake_redis, keys, _SETTINGS, record)
    assert [e.status for e in await _terminal_entries(fake_redis, keys)] == [RunStatus.COMPLETED]


async def test_an_end_cut_short_by_an_older_version_gets_its_entry_once(
    fake_redis: Any, keys: Keys
) -> None:
    """A record made terminal without its entry (an older worker's end, whose second
    round trip never came) gets the entry from the next `announce_end`, once."""
    runs = RunStore(fake_redis, keys)
    await runs.create(_record(status=RunStatus.ABORTED, abort_reason="stop"))
    record = await runs.get("r1")
    await announce_end(fake_redis, keys, _SETTINGS, record)
    await announce_end(fake_redis, keys, _SETTINGS, record)
    (entry,) = await _terminal_entries(fake_redis, keys)
    assert entry.status is RunStatus.ABORTED
    assert entry.abort_reason == "stop"


async def test_an_entry_an_older_version_wrote_is_not_written_again(
    fake_redis: Any, keys: Keys
) -> None:
    """Older versions kept the end publisher's batch marker in the publishers hash."""
    runs = RunStore(fake_redis, keys)
    await runs.create(_record(status=RunStatus.COMPLETED))
    old = EventPublisher(fake_redis, keys, session_id="s1", run_id="r1")
    old.publish_status(StatusEntry(run_id="r1", status=RunStatus.COMPLETED))
    await old.close(expire=False)
    await fake_redis.hset(keys.publishers("s1"), "end:r1", "1")
    await announce_end(fake_redis, keys, _SETTINGS, await runs.get("r1"))
    assert len(await _terminal_entries(fake_redis, keys)) == 1


async def test_a_reader_woken_by_the_terminal_entry_finds_the_attempt_done(
    fake_redis: Any, keys: Keys
) -> None:
    runs = RunStore(fake_redis, keys)
    await runs.create(_record())
    leases = LeaseTable(fake_redis, keys)
    assert await leases.renew("r1", attempt=1, worker_id="w1", ttl_s=60)
    reader = StreamReader(fake_redis, keys)

    async def first_terminal() -> Any:
        async for entry in reader.tail("s1", block_ms=100, stop_at_terminal=True):
            if entry.status is not None and entry.status.status.terminal:
                return await runs.get("r1"), await leases.owner("r1")
        return None

    woken = asyncio.create_task(first_terminal())
    await asyncio.sleep(0.05)
    await _end(fake_redis, keys, attempt=1, release=True, drop_checkpoint=True)
    record, owner = await asyncio.wait_for(woken, 5)
    assert record.status is RunStatus.COMPLETED
    assert owner is not None
    assert owner["state"] == "released"


async def test_the_end_script_itself_writes_the_entry(fake_redis: Any, keys: Keys) -> None:
    """`RunStore.end` with `announce`: the terminal entry is part of the end's one script
    (no second round trip in `end_run`)."""
    runs = RunStore(fake_redis, keys)
    await runs.create(_record())
    writes = EndWrites(session_id="s1", run_ttl_s=600, stream_ttl_s=300, announce=True)
    ended = await runs.end(
        "r1", status=RunStatus.COMPLETED, from_status={RunStatus.RUNNING}, writes=writes
    )
    assert ended is not None
    (entry,) = await _terminal_entries(fake_redis, keys)
    assert entry.status is RunStatus.COMPLETED
    assert 0 < await fake_redis.ttl(keys.events("s1")) <= 300
    # Without `announce`, no entry.
    await runs.create(_record("r2"))
    quiet = EndWrites(session_id="s1", run_ttl_s=600, stream_ttl_s=300)
    await runs.end("r2", status=RunStatus.COMPLETED, from_status={RunStatus.RUNNING}, writes=quiet)
    assert [e.run_id for e in await _terminal_entries(fake_redis, keys)] == ["r1"]
