"""Session journals (PyRepl's executed inputs): in memory and on Redis (fakeredis)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.ports import JournalLimits, SessionJournal
from orchestrator.runtime.journal import InMemorySessionJournal
from orchestrator.store.journal import RedisSessionJournal
from tests.contracts.session_journal_contract import SessionJournalContract

pytestmark = pytest.mark.timeout(10)


class TestInMemorySessionJournal(SessionJournalContract):
    @pytest.fixture
    def make_journal(self) -> Callable[[JournalLimits], SessionJournal]:
        return InMemorySessionJournal


class TestRedisSessionJournal(SessionJournalContract):
    @pytest.fixture
    def make_journal(self, fake_redis: Any, keys: Keys) -> Callable[[JournalLimits], Any]:
        return lambda limits: RedisSessionJournal(fake_redis, keys, session_id="s1", limits=limits)


async def test_an_in_memory_journal_expires_after_its_retention() -> None:
    now = [0.0]
    journal = InMemorySessionJournal(JournalLimits(retention_s=10), clock=lambda: now[0])
    await journal.append("repl", {"code": "a"})
    now[0] = 9.0
    await journal.append("repl", {"code": "b"})  # a write refreshes the retention
    now[0] = 18.0
    assert (await journal.head("repl")).seq == 2
    now[0] = 19.5
    assert (await journal.head("repl")).generation is None


async def test_every_redis_write_sets_the_retention(fake_redis: Any, keys: Keys) -> None:
    journal = RedisSessionJournal(fake_redis, keys, session_id="s1", limits=JournalLimits(60))
    key = keys.journal("s1", "repl")
    await journal.append("repl", {"code": "a"})
    assert 0 < await fake_redis.pttl(key) <= 60_000
    await fake_redis.persist(key)
    await journal.reset("repl")
    assert 0 < await fake_redis.pttl(key) <= 60_000


async def test_sessions_never_share_a_journal(fake_redis: Any, keys: Keys) -> None:
    one = RedisSessionJournal(fake_redis, keys, session_id="s1")
    two = RedisSessionJournal(fake_redis, keys, session_id="s2")
    await one.append("repl", {"code": "a"})
    assert (await two.head("repl")).seq == 0


async def test_a_corrupt_entry_makes_the_record_incomplete_not_an_error(
    fake_redis: Any, keys: Keys
) -> None:
    journal = RedisSessionJournal(fake_redis, keys, session_id="s1")
    for code in ("a", "b", "c"):
        await journal.append("repl", {"code": code})
    await fake_redis.hset(keys.journal("s1", "repl"), "e:2", b"\xff not json")
    record = await journal.read("repl")
    assert [e["code"] for e in record.entries] == ["a"]
    assert not record.complete


async def test_garbage_counters_read_as_an_empty_or_incomplete_journal(
    fake_redis: Any, keys: Keys
) -> None:
    journal = RedisSessionJournal(fake_redis, keys, session_id="s1")
    key = keys.journal("s1", "repl")
    await fake_redis.hset(key, mapping={"seq": "many", "stored": "-3"})
    assert (await journal.head("repl")).generation is None  # no generation: never written
    await fake_redis.hset(key, mapping={"gen": "g1", "seq": "1", "stored": "5"})
    head = await journal.head("repl")
    assert (head.seq, head.stored) == (5, 5)
    assert not (await journal.read("repl")).complete  # e:1..e:5 are missing


def test_journal_names_may_not_break_the_session_hash_tag() -> None:
    with pytest.raises(ValueError, match="journal name"):
        Keys("orc").journal("s1", "re{pl}")
    assert Keys("orc").journal("s1", "pyrepl.fork_3") == "orc:{s1}:journal:pyrepl.fork_3"
