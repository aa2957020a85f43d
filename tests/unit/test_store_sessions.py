"""Session owners on fakeredis: the first submit owns the session, in O(1)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.keys import Keys
from orchestrator.store.sessions import SessionOwner, SessionTable

pytestmark = pytest.mark.timeout(10)


async def test_the_first_claim_owns_the_session_and_others_are_told_who_does(
    fake_redis: Any, keys: Keys
) -> None:
    table = SessionTable(fake_redis, keys)
    assert await table.owner("s1") is None
    assert await table.claim("s1", "acme", ttl_s=60) == SessionOwner("acme")
    assert await table.claim("s1", "globex", ttl_s=60) == SessionOwner("acme")
    assert await table.owner("s1") == SessionOwner("acme")


async def test_of_many_tenants_claiming_a_new_session_at_once_exactly_one_owns_it(
    fake_redis: Any, keys: Keys
) -> None:
    table = SessionTable(fake_redis, keys)
    owners = await asyncio.gather(*(table.claim("s1", f"t{i}", ttl_s=60) for i in range(20)))
    assert len(set(owners)) == 1
    (winner,) = set(owners)
    assert [o.admits(f"t{i}") for i, o in enumerate(owners)].count(True) == 1
    assert await table.owner("s1") == winner


def test_the_operator_is_admitted_everywhere_and_a_tenant_only_to_its_own() -> None:
    assert SessionOwner("acme").admits("acme")
    assert SessionOwner("acme").admits(None)
    assert not SessionOwner("acme").admits("globex")
    assert SessionOwner(None).admits(None)
    assert not SessionOwner(None).admits("acme")


async def test_the_owners_claims_refresh_the_ttl_and_others_do_not(
    fake_redis: Any, keys: Keys
) -> None:
    table = SessionTable(fake_redis, keys)
    await table.claim("s1", "acme", ttl_s=10)
    await table.claim("s1", "globex", ttl_s=1000)
    assert await fake_redis.ttl(keys.session_owner("s1")) <= 10
    await table.claim("s1", "acme", ttl_s=1000)
    assert await fake_redis.ttl(keys.session_owner("s1")) > 900


async def test_the_session_run_index_keeps_recent_runs_and_expires(
    fake_redis: Any, keys: Keys
) -> None:
    table = SessionTable(fake_redis, keys)
    await table.add_run("s1", "old", submitted_at=1.0, ttl_s=60, keep_s=3600)
    await table.add_run("s1", "new", submitted_at=4_000_000_000.0, ttl_s=60, keep_s=3600)
    assert await table.runs("s1") == ["new"]
    assert 0 < await fake_redis.ttl(keys.session_runs("s1")) <= 60


async def test_an_unreadable_owner_admits_only_the_operator(fake_redis: Any, keys: Keys) -> None:
    await fake_redis.set(keys.session_owner("s1"), b"\xff garbage")
    owner = await SessionTable(fake_redis, keys).owner("s1")
    assert owner is not None
    assert owner.admits(None)
    assert not owner.admits("acme")


async def test_entering_a_session_claims_it_clears_its_flag_and_indexes_the_run_at_once(
    fake_redis: Any, keys: Keys
) -> None:
    table = SessionTable(fake_redis, keys)
    enter = {"submitted_at": 4_000_000_000.0, "ttl_s": 60, "keep_s": 3600}
    assert await table.enter("s1", "acme", "r1", clear_abort=False, **enter) == SessionOwner("acme")
    await fake_redis.set(keys.abort("s1"), b"x")
    assert await table.enter("s1", "acme", "r2", clear_abort=True, **enter) == SessionOwner("acme")
    assert await fake_redis.exists(keys.abort("s1")) == 0
    assert await table.enter("s1", None, "r3", clear_abort=False, **enter) == SessionOwner("acme")
    assert sorted(await table.runs("s1")) == ["r1", "r2", "r3"]
    assert 0 < await fake_redis.ttl(keys.session_owner("s1")) <= 60
    assert 0 < await fake_redis.ttl(keys.session_runs("s1")) <= 60


async def test_a_session_that_does_not_admit_the_caller_is_left_exactly_as_it_was(
    fake_redis: Any, keys: Keys
) -> None:
    table = SessionTable(fake_redis, keys)
    enter = {"submitted_at": 4_000_000_000.0, "keep_s": 3600}
    await table.enter("s1", "acme", "r1", clear_abort=False, ttl_s=10, **enter)
    await fake_redis.set(keys.abort("s1"), b"x")
    owner = await table.enter("s1", "globex", "r2", clear_abort=True, ttl_s=1000, **enter)
    assert owner == SessionOwner("acme")
    assert not owner.admits("globex")
    assert await fake_redis.exists(keys.abort("s1")) == 1
    assert await table.runs("s1") == ["r1"]
    assert await fake_redis.ttl(keys.session_owner("s1")) <= 10
    await fake_redis.set(keys.session_owner("s2"), b"\xff garbage")
    assert not (await table.enter("s2", "acme", "r3", clear_abort=False, ttl_s=9, **enter)).admits(
        "acme"
    )
    assert await table.runs("s2") == []
    assert (await table.enter("s2", None, "r4", clear_abort=False, ttl_s=9, **enter)).admits(None)
    assert await table.runs("s2") == ["r4"]


async def test_an_empty_tenant_is_refused_before_anything_is_written(
    fake_redis: Any, keys: Keys
) -> None:
    sessions = SessionTable(fake_redis, keys)
    with pytest.raises(ValueError, match="non-empty"):
        await sessions.enter(
            "s-empty", "", "r1", submitted_at=1.0, ttl_s=60, keep_s=60, clear_abort=True
        )
    assert await fake_redis.exists(keys.session_owner("s-empty"), keys.session_runs("s-empty")) == 0
