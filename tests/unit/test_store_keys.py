"""Key names: one prefix, session hash tags, and ids that cannot break a hash tag."""

from __future__ import annotations

import pytest

from orchestrator.keys import Keys


def test_session_keys_share_the_session_hash_tag() -> None:
    keys = Keys()
    names = [
        keys.events("s1"),
        keys.abort("s1"),
        keys.seqs("s1"),
        keys.publishers("s1"),
        keys.checkpoint("s1", "call-1"),
    ]
    assert keys.events("s1") == "orc:{s1}:events"
    assert all(name.startswith("orc:{s1}:") for name in names)
    assert len(set(names)) == len(names)


def test_every_name_carries_the_prefix() -> None:
    keys = Keys(prefix="p")
    names = [
        keys.run("r"),
        keys.runs_index(),
        keys.runs_by_status("queued"),
        keys.runs_expiring(),
        keys.memory("m"),
        keys.queue(),
        keys.wake(),
        keys.leases(),
        keys.lease("r"),
        keys.workers(),
    ]
    assert all(name.startswith("p:") for name in names)
    assert keys.queue() == "p:queue"
    assert keys.memory("m") == "p:mem:{m}"


def test_run_keys_and_indexes_share_one_hash_tag() -> None:
    keys = Keys()
    for name in (keys.run("r1"), keys.runs_index(), keys.runs_by_status("running")):
        assert "{runs}" in name
    assert "{leases}" in keys.leases()
    assert "{leases}" in keys.lease("r1")


@pytest.mark.parametrize("bad", ["", "a{b", "a}b"])
def test_session_ids_that_would_break_a_hash_tag_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="session_id"):
        Keys().events(bad)
    with pytest.raises(ValueError, match="agent_call_id"):
        Keys().checkpoint("s", bad)


def test_memory_keys_may_be_any_string_and_never_collide() -> None:
    keys = Keys()
    assert keys.memory("a}:x") != keys.memory("a")
    assert keys.memory("user:42") == "orc:mem:{user:42}"


def test_pattern_escapes_glob_characters() -> None:
    assert Keys(prefix="a*b").pattern() == "a\\*b:*"


def test_scoped_memory_names_carry_the_scope_in_the_hash_tag_and_never_collide() -> None:
    keys = Keys()
    assert keys.scoped_memory("agent", tenant="acme", session_id="s1") == (
        "orc:selfref:{t4:acme,s2:s1,agent}"
    )
    assert keys.scoped_memory("agent", tenant=None, session_id=None) == "orc:selfref:{t-,*,agent}"
    lookalikes = [
        keys.scoped_memory("c", tenant="a:b", session_id="x"),
        keys.scoped_memory("c", tenant="a", session_id="b:x"),
        keys.scoped_memory("x,c", tenant="a", session_id=None),
        keys.scoped_memory("c", tenant="a", session_id="x"),
        keys.scoped_memory("s1:x,c", tenant="a", session_id=None),
        keys.scoped_memory("c", tenant=None, session_id="x"),
        keys.scoped_memory("c", tenant="-", session_id="x"),
        keys.memory("c"),
    ]
    assert len(set(lookalikes)) == len(lookalikes)


@pytest.mark.parametrize("bad", ["", "a{b", "a}b"])
def test_tenants_that_would_break_a_hash_tag_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="tenant"):
        Keys().scoped_memory("agent", tenant=bad, session_id="s1")


def test_session_owner_index_and_run_abort_keys_share_the_session_hash_tag() -> None:
    keys = Keys()
    names = [keys.session_owner("s1"), keys.session_runs("s1"), keys.run_abort("s1", "r1")]
    assert all(name.startswith("orc:{s1}:") for name in names)
    assert keys.run_abort("s1", "r1") != keys.abort("s1")
    assert len(set(names)) == 3


def test_the_bounded_keys_cover_the_index_of_every_run_status() -> None:
    from orchestrator.runs import RunStatus

    keys = Keys(prefix="p")
    assert {keys.runs_by_status(s) for s in RunStatus} <= keys.bounded()
    assert keys.events("s") not in keys.bounded()
