"""The session's retention at a run's end: the ends of a fan-out push the stream's (and
seqs') TTL back once per window (a tenth of the retention, at most a minute), not each;
an end past the window, or after a publisher gave the stream its longer idle TTL, pushes
it back to the retention; the session's owner always outlives the stream. (A stream the
end creates gets the retention: tests/unit/test_store_folded_end.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunStatus
from orchestrator.settings import Settings
from orchestrator.store.lifecycle import end_run
from orchestrator.store.runs import RunStore
from orchestrator.store.streams import EventPublisher
from tests.fixtures_redis import event_output

pytestmark = pytest.mark.timeout(10)

_SETTINGS = Settings(stream_retention_s=3_600)
_FULL_MS = _SETTINGS.stream_retention_s * 1000
_WINDOW_MS = 60_000


async def _end(redis: Any, keys: Keys, run_id: str) -> None:
    record = RunRecord(
        run_id=run_id, session_id="s1", agent="pkg:agent", status=RunStatus.RUNNING, attempt=1
    )
    await RunStore(redis, keys).create(record)
    ended = await end_run(
        redis, keys, _SETTINGS, run_id=run_id, session_id="s1", status=RunStatus.COMPLETED
    )
    assert ended is not None


async def _ttls(redis: Any, keys: Keys) -> tuple[int, int]:
    return await redis.pttl(keys.events("s1")), await redis.pttl(keys.seqs("s1"))


async def _age(redis: Any, keys: Keys, ms: int) -> None:
    """As if `ms` had passed since the stream's TTL was last set."""
    for key in (keys.events("s1"), keys.seqs("s1")):
        await redis.pexpire(key, await redis.pttl(key) - ms)


async def test_a_fan_outs_ends_push_the_sessions_retention_back_once_per_window(
    fake_redis: Any, keys: Keys
) -> None:
    owner = keys.session_owner("s1")
    await fake_redis.set(owner, "-", px=1_000)
    await _end(fake_redis, keys, "p.fork_1")
    assert all(_FULL_MS - 1_000 < ttl <= _FULL_MS for ttl in await _ttls(fake_redis, keys))

    # Within the window: left as the first end set it (the retention less a few seconds).
    await _age(fake_redis, keys, 5_000)
    await _end(fake_redis, keys, "p.fork_2")
    assert all(0 < ttl <= _FULL_MS - 5_000 for ttl in await _ttls(fake_redis, keys))
    assert await fake_redis.pttl(owner) > _FULL_MS

    # Past the window: pushed back to the retention.
    await _age(fake_redis, keys, _WINDOW_MS)
    await _end(fake_redis, keys, "p.fork_3")
    assert all(_FULL_MS - 1_000 < ttl <= _FULL_MS for ttl in await _ttls(fake_redis, keys))

    # After a publisher's idle TTL (longer than the retention): cut to the retention.
    publisher = EventPublisher(fake_redis, keys, session_id="s1", run_id="p")
    publisher.publish(event_output(0))
    await publisher.close(expire=False)
    assert all(ttl > _FULL_MS for ttl in await _ttls(fake_redis, keys))
    await _end(fake_redis, keys, "p.fork_4")
    assert all(_FULL_MS - 1_000 < ttl <= _FULL_MS for ttl in await _ttls(fake_redis, keys))
    assert await fake_redis.pttl(owner) > await fake_redis.pttl(keys.events("s1"))
