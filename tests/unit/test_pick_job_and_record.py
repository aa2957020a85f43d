"""A turn's pick reads its job and its run's record together: a job key that is not
arq's is still told from a job that is gone (broken: removed and counted), and a record
key of another type still reads as no record."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.keys import Keys
from tests.unit.test_store_pick_start import _given, _queue, _record, _request, _worker

pytestmark = pytest.mark.timeout(10)


async def test_a_turns_job_key_of_another_type_is_broken_not_gone(
    fake_redis: Any, keys: Keys
) -> None:
    request = _request()
    await _given(fake_redis, keys, request, _record(request))
    jid = await _queue(fake_redis, keys, request)
    await fake_redis.delete(f"arq:job:{jid}")
    await fake_redis.hset(f"arq:job:{jid}", "not", "a job")
    (picked,) = await _worker(fake_redis, keys)._pick_many([jid.encode()])
    assert picked is not None
    assert picked.broken
    assert picked.payload is None


async def test_a_turns_job_that_is_gone_is_not_broken(fake_redis: Any, keys: Keys) -> None:
    request = _request()
    await _given(fake_redis, keys, request, _record(request))
    jid = await _queue(fake_redis, keys, request)
    await fake_redis.delete(f"arq:job:{jid}")
    (picked,) = await _worker(fake_redis, keys)._pick_many([jid.encode()])
    assert picked is not None
    assert not picked.broken
    assert picked.payload is None


async def test_a_record_key_of_another_type_reads_as_no_record(fake_redis: Any, keys: Keys) -> None:
    request = _request()
    jid = await _queue(fake_redis, keys, request)
    await fake_redis.hset(keys.run(request.run_id), "not", "a record")
    (picked,) = await _worker(fake_redis, keys)._pick_many([jid.encode()])
    assert picked is not None
    assert not picked.broken
    assert picked.payload is not None
    assert picked.read is None
    assert picked.start == [0]
