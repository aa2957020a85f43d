"""The SessionJournal contract on the real Redis, with clients racing like workers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from orchestrator.keys import Keys
from orchestrator.ports import JournalLimits
from orchestrator.store.connection import Redis
from orchestrator.store.journal import RedisSessionJournal
from tests.contracts.session_journal_contract import SessionJournalContract

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]


class TestRedisSessionJournalOnRealRedis(SessionJournalContract):
    @pytest.fixture
    def make_journal(
        self, redis: Redis, keys: Keys
    ) -> Callable[[JournalLimits], RedisSessionJournal]:
        return lambda limits: RedisSessionJournal(redis, keys, session_id="s1", limits=limits)


async def test_appends_from_several_clients_all_land_once(
    redis: Redis, keys: Keys, make_redis: Callable[..., Redis]
) -> None:
    journals = [RedisSessionJournal(make_redis(), keys, session_id="s1") for _ in range(4)]
    await asyncio.gather(
        *(j.append("repl", {"by": n, "i": i}) for n, j in enumerate(journals) for i in range(10))
    )
    record = await RedisSessionJournal(redis, keys, session_id="s1").read("repl")
    assert (record.seq, record.stored) == (40, 40)
    assert sorted((e["by"], e["i"]) for e in record.entries) == [
        (n, i) for n in range(4) for i in range(10)
    ]
    assert await redis.pttl(keys.journal("s1", "repl")) > 0
