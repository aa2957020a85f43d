"""Scoped SelfReference memory on Redis (fakeredis): where records live, how long they
live, and that a scope never sees another scope's records."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.ports import MemoryLimits, TranscriptBase
from orchestrator.store.memory import MemoryScope, RedisMemoryStore

pytestmark = pytest.mark.timeout(10)


def store(redis: Any, keys: Keys, scope: MemoryScope, **limits: Any) -> RedisMemoryStore:
    return RedisMemoryStore(redis, keys, scope=scope, limits=MemoryLimits(**limits))


async def test_sessions_and_tenants_never_see_each_others_memory(
    fake_redis: Any, keys: Keys
) -> None:
    scopes = [
        MemoryScope(tenant="acme", session_id="s1"),
        MemoryScope(tenant="acme", session_id="s2"),
        MemoryScope(tenant="globex", session_id="s1"),
        MemoryScope(tenant=None, session_id="s1"),
        MemoryScope(tenant="acme", session_id=None),
        MemoryScope(tenant=None, session_id=None),
    ]
    stores = [store(fake_redis, keys, scope) for scope in scopes]
    for i, memory in enumerate(stores):
        await memory.save_messages("agent", [{"role": "user", "content": f"scope {i}"}])
        await memory.add_experience("agent", f"lesson {i}")
    for i, memory in enumerate(stores):
        snapshot = await memory.load("agent")
        assert snapshot.messages == [{"role": "user", "content": f"scope {i}"}]
        assert [e.text for e in snapshot.experiences] == [f"lesson {i}"]
    assert len({memory.record_key("agent") for memory in stores}) == len(scopes)


async def test_a_fork_key_lives_in_its_parents_scope(fake_redis: Any, keys: Keys) -> None:
    scope = MemoryScope(tenant="acme", session_id="s1")
    parent = store(fake_redis, keys, scope)
    name = parent.record_key("agent::fork::3")
    assert name.startswith(f"{keys.prefix}:selfref:{{t4:acme,s2:s1,")
    assert name.endswith("agent::fork::3}")
    await parent.save_messages("agent::fork::3", [{"role": "user", "content": "fork"}])
    other = store(fake_redis, keys, MemoryScope(tenant="acme", session_id="s2"))
    assert (await other.load("agent::fork::3")).messages == []


async def test_the_tenant_scope_is_shared_by_the_tenants_sessions_only(
    fake_redis: Any, keys: Keys
) -> None:
    runs_of_acme = [
        store(fake_redis, keys, MemoryScope.for_run("tenant", tenant="acme", session_id=s))
        for s in ("s1", "s2")
    ]
    await runs_of_acme[0].add_experience("agent", "acme likes tea")
    assert [e.text for e in (await runs_of_acme[1].load("agent")).experiences] == ["acme likes tea"]
    globex = store(
        fake_redis, keys, MemoryScope.for_run("tenant", tenant="globex", session_id="s1")
    )
    assert (await globex.load("agent")).experiences == []
    session = store(
        fake_redis, keys, MemoryScope.for_run("session", tenant="acme", session_id="s1")
    )
    assert (await session.load("agent")).experiences == []


async def test_every_write_gives_the_record_its_retention(fake_redis: Any, keys: Keys) -> None:
    memory = store(fake_redis, keys, MemoryScope("acme", "s1"), retention_s=600)
    name = memory.record_key("agent")

    async def ttl_after(write: Any) -> int:
        await fake_redis.persist(name)
        await write
        ttl: int = await fake_redis.ttl(name)
        return ttl

    await memory.save_messages("agent", [{"role": "user", "content": "hi"}])
    base = TranscriptBase(revision=1, count=1, writer="call-1")
    writes = [
        memory.save_messages("agent", [{"role": "user", "content": "hi"}]),
        memory.save_turn("agent", [{"role": "user", "content": "hi"}, {"role": "user"}], base),
        memory.add_experience("agent", "a lesson"),
        memory.set_summary("agent", {"goal": "g"}),
        memory.set_pending_compaction("agent", {"summary": {"goal": "g"}}),
        memory.set_pending_compaction("agent", None),
        memory.remove_experience("agent", "exp_1"),
    ]
    for write in writes:
        assert 590 <= await ttl_after(write) <= 600


async def test_a_trimmed_transcript_is_logged_as_a_warning(fake_redis: Any, keys: Keys) -> None:
    from structlog.testing import capture_logs

    memory = store(fake_redis, keys, MemoryScope("acme", "s1"), max_message_bytes=1024)
    messages = [{"role": "user", "content": f"{i}" * 300} for i in range(5)]
    with capture_logs() as logs:
        await memory.save_messages("agent", messages)
    (warning,) = [entry for entry in logs if entry["event"] == "memory.trimmed"]
    assert warning["log_level"] == "warning"
    assert warning["key"] == "agent"
    assert warning["dropped_messages"] == 2
    assert (await memory.load("agent")).messages == messages[2:]


async def test_a_record_written_by_an_older_version_still_loads(
    fake_redis: Any, keys: Keys
) -> None:
    """No `rev` or `writers` field: revision 0, and the first turn save replaces it."""
    memory = store(fake_redis, keys, MemoryScope("acme", "s1"))
    await fake_redis.hset(memory.record_key("agent"), "messages", '[{"role":"user","content":"a"}]')
    snapshot = await memory.load("agent")
    assert snapshot.revision == 0
    base = TranscriptBase(revision=0, count=1, writer="call-1")
    await memory.save_turn("agent", [*snapshot.messages, {"role": "user", "content": "b"}], base)
    assert [m["content"] for m in (await memory.load("agent")).messages] == ["a", "b"]
