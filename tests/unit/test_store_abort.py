"""AbortFlags and AbortWatcher on fakeredis."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import fakeredis
import pytest

from orchestrator.keys import Keys
from orchestrator.signals import AbortSignal
from orchestrator.store.abort import AbortFlags, AbortWatcher

pytestmark = pytest.mark.timeout(10)


async def test_no_abort_until_requested(fake_redis: Any, keys: Keys) -> None:
    assert await AbortFlags(fake_redis, keys).get("s1") is None


async def test_the_first_reason_wins(fake_redis: Any, keys: Keys) -> None:
    flags = AbortFlags(fake_redis, keys)
    assert await flags.request("s1", "user pressed stop") is True
    assert await flags.request("s1", "second thoughts") is False
    assert await flags.get("s1") == "user pressed stop"


async def test_an_empty_reason_is_still_an_abort(fake_redis: Any, keys: Keys) -> None:
    flags = AbortFlags(fake_redis, keys)
    await flags.request("s1", "")
    assert await flags.get("s1") == ""


async def test_clear_removes_the_flag(fake_redis: Any, keys: Keys) -> None:
    flags = AbortFlags(fake_redis, keys)
    await flags.request("s1", "stop")
    await flags.clear("s1")
    assert await flags.get("s1") is None


async def test_the_flag_expires(fake_redis: Any, keys: Keys) -> None:
    await AbortFlags(fake_redis, keys).request("s1", "stop", ttl_s=30)
    assert 0 < await fake_redis.ttl(keys.abort("s1")) <= 30


async def test_a_hand_written_flag_aborts_with_its_text_as_reason(
    fake_redis: Any, keys: Keys
) -> None:
    await fake_redis.set(keys.abort("s1"), "operator said so")
    assert await AbortFlags(fake_redis, keys).get("s1") == "operator said so"
    await fake_redis.set(keys.abort("s2"), "[1, 2]")
    assert await AbortFlags(fake_redis, keys).get("s2") == "[1, 2]"


async def test_watcher_fires_every_signal_of_the_aborted_session(
    fake_redis: Any, keys: Keys
) -> None:
    watcher = AbortWatcher(fake_redis, keys, interval_s=0.01)
    first, second, other = AbortSignal(), AbortSignal(), AbortSignal()
    watcher.watch("s1", first)
    watcher.watch("s1", second)
    watcher.watch("s2", other)
    await watcher.start()
    await AbortFlags(fake_redis, keys).request("s1", "stop now")
    await asyncio.wait_for(asyncio.gather(first.wait(), second.wait()), timeout=1)
    assert first.reason == second.reason == "stop now"
    assert not other.is_aborted
    assert watcher.watched_sessions == ["s2"]
    await watcher.stop()


async def test_unwatched_signals_are_not_fired(fake_redis: Any, keys: Keys) -> None:
    watcher = AbortWatcher(fake_redis, keys, interval_s=0.01)
    signal = AbortSignal()
    watcher.watch("s1", signal)
    watcher.unwatch("s1", signal)
    watcher.unwatch("s1", signal)  # twice is fine
    await AbortFlags(fake_redis, keys).request("s1", "stop")
    assert await watcher.poll_once() == 0
    assert not signal.is_aborted


async def test_an_idle_watcher_makes_no_redis_calls(fake_redis: Any, keys: Keys) -> None:
    watcher = AbortWatcher(fake_redis, keys, interval_s=0.01)
    await watcher.start()
    await asyncio.sleep(0.05)
    assert watcher.polls == 0
    signal = AbortSignal()
    watcher.watch("s1", signal)
    await asyncio.sleep(0.05)
    assert watcher.polls >= 2
    watcher.unwatch("s1", signal)
    await asyncio.sleep(0.03)
    polls = watcher.polls
    await asyncio.sleep(0.05)
    assert watcher.polls == polls
    await watcher.stop()


async def test_one_mget_covers_every_watched_session(fake_redis: Any, keys: Keys) -> None:
    watcher = AbortWatcher(fake_redis, keys)
    for i in range(20):
        watcher.watch(f"s{i}", AbortSignal())
    await watcher.poll_once()
    assert watcher.polls == 1


async def test_a_redis_outage_in_the_poll_loop_is_retried() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeAsyncRedis(server=server)
    keys = Keys("t")
    await AbortFlags(redis, keys).request("s1", "stop")
    server.connected = False
    watcher = AbortWatcher(redis, keys, interval_s=0.01)
    signal = AbortSignal()
    watcher.watch("s1", signal)
    await watcher.start()
    await asyncio.sleep(0.05)
    assert not signal.is_aborted
    server.connected = True
    await asyncio.wait_for(signal.wait(), timeout=2)
    await watcher.stop()
    await redis.aclose()


async def test_a_bad_session_id_is_refused_at_watch(fake_redis: Any, keys: Keys) -> None:
    with pytest.raises(ValueError, match="session_id"):
        AbortWatcher(fake_redis, keys).watch("a{b}", AbortSignal())


async def test_a_run_tree_flag_fires_only_that_trees_signals(fake_redis: Any, keys: Keys) -> None:
    watcher = AbortWatcher(fake_redis, keys, interval_s=0.01)
    root, fork, sibling, session_only = (AbortSignal() for _ in range(4))
    watcher.watch("s1", root, "run-1")
    watcher.watch("s1", fork, "run-1")
    watcher.watch("s1", sibling, "run-2")
    watcher.watch("s1", session_only)
    await AbortFlags(fake_redis, keys).request_run("s1", "run-1", "stop this one")
    assert await watcher.poll_once() == 2
    assert root.reason == fork.reason == "stop this one"
    assert not sibling.is_aborted
    assert not session_only.is_aborted


async def test_a_session_flag_fires_every_tree_of_the_session(fake_redis: Any, keys: Keys) -> None:
    watcher = AbortWatcher(fake_redis, keys)
    signals = [AbortSignal() for _ in range(3)]
    for i, signal in enumerate(signals):
        watcher.watch("s1", signal, f"run-{i}")
    other = AbortSignal()
    watcher.watch("s2", other, "run-9")
    await AbortFlags(fake_redis, keys).request("s1", "close it")
    assert await watcher.poll_once() == 3
    assert {s.reason for s in signals} == {"close it"}
    assert not other.is_aborted
    assert watcher.polls == 1


async def test_one_mget_covers_session_and_tree_flags(fake_redis: Any, keys: Keys) -> None:
    watcher = AbortWatcher(fake_redis, keys)
    for i in range(20):
        watcher.watch(f"s{i % 4}", AbortSignal(), f"run-{i}")
    await watcher.poll_once()
    assert watcher.polls == 1


async def test_get_for_reads_the_trees_flag_then_the_sessions(fake_redis: Any, keys: Keys) -> None:
    flags = AbortFlags(fake_redis, keys)
    assert await flags.get_for("s1", "run-1") is None
    await flags.request("s1", "whole session")
    assert await flags.get_for("s1", "run-1") == "whole session"
    await flags.request_run("s1", "run-1", "this tree")
    assert await flags.get_for("s1", "run-1") == "this tree"
    await flags.clear("s1")
    assert await flags.get_for("s1", "run-2") is None
    assert await flags.get_for("s1", "run-1") == "this tree"
    assert 0 < await fake_redis.ttl(keys.run_abort("s1", "run-1")) <= 86_400


async def test_a_pushed_tree_abort_fires_with_its_reason_without_reading_the_flag(
    fake_redis: Any, keys: Keys
) -> None:
    """The push of the call that set a tree's flag carries its reason: the watcher fires
    at once (no MGET). A later request (the flag was set) pushes without it: a poll."""
    watcher = AbortWatcher(fake_redis, keys, interval_s=30.0)  # one poll, then a long wait
    await watcher.start()
    first, later = AbortSignal(), AbortSignal()
    watcher.watch("s1", first, "root-1")
    await asyncio.sleep(0.2)  # subscribed, and the first poll found nothing
    polls = watcher.polls
    flags = AbortFlags(fake_redis, keys)
    assert await flags.request_run("s1", "root-1", "stop now")
    await asyncio.wait_for(first.wait(), 5)
    assert first.reason == "stop now"
    assert watcher.polls == polls
    watcher.watch("s1", later, "root-1")
    assert not await flags.request_run("s1", "root-1", "another reason")
    await asyncio.wait_for(later.wait(), 5)
    assert later.reason == "stop now"  # the flag's, read by a poll
    assert watcher.polls > polls
    await watcher.stop()


# A stand-in for the writes `Client.abort` sends with a tree's flag (its waiting runs'
# jobs): note whether the flag is there, and say so on the aborts channel.
_THEN_LUA = """
redis.call('SET', KEYS[2], redis.call('EXISTS', KEYS[1]))
redis.call('PUBLISH', KEYS[3], 'then')
return 1
"""


async def _messages(pubsub: Any, count: int) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < count:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if message is not None:
            got.append(message["data"])
    return got


async def test_writes_sent_with_a_tree_abort_land_after_its_flag_and_before_its_push(
    fake_redis: Any, keys: Keys
) -> None:
    """`request_run(then=...)`: one round trip that sets the flag, runs the calls (a
    worker they wake finds the flag set) and then pushes the abort, with its reason only
    if this call set the flag."""
    pubsub = fake_redis.pubsub()
    await pubsub.subscribe(keys.aborts())
    then = fake_redis.register_script(_THEN_LUA)
    await fake_redis.script_load(_THEN_LUA)
    flag = keys.run_abort("s1", "root-1")
    call = (then, [flag, f"{keys.prefix}:seen", keys.aborts()], [])
    flags = AbortFlags(fake_redis, keys)

    assert await flags.request_run("s1", "root-1", "stop now", then=[call]) is True
    assert await fake_redis.get(f"{keys.prefix}:seen") == b"1"
    first, push = await _messages(pubsub, 2)
    assert first == b"then"
    assert json.loads(push) == {"session": "s1", "root": "root-1", "reason": "stop now"}
    assert await flags.get_for("s1", "root-1") == "stop now"

    await fake_redis.delete(f"{keys.prefix}:seen")
    assert await flags.request_run("s1", "root-1", "again", then=[call]) is False
    assert await fake_redis.get(f"{keys.prefix}:seen") == b"1"
    first, push = await _messages(pubsub, 2)
    assert first == b"then"
    assert json.loads(push) == {"session": "s1", "root": "root-1"}  # not its flag: a poll
    assert await flags.get_for("s1", "root-1") == "stop now"
    await pubsub.aclose()


async def test_a_write_whose_script_redis_lacks_still_lands_after_the_flag(
    fake_redis: Any, keys: Keys
) -> None:
    """NOSCRIPT for a call of `then` (Redis restarted, its scripts gone): it is loaded
    and sent again, still after the flag (the push may then come first)."""
    pubsub = fake_redis.pubsub()
    await pubsub.subscribe(keys.aborts())
    then = fake_redis.register_script(_THEN_LUA)  # never loaded
    flag = keys.run_abort("s1", "root-1")
    call = (then, [flag, f"{keys.prefix}:seen", keys.aborts()], [])

    assert await AbortFlags(fake_redis, keys).request_run("s1", "root-1", "stop", then=[call])
    assert await fake_redis.get(f"{keys.prefix}:seen") == b"1"
    pushed = await _messages(pubsub, 2)
    assert sorted(pushed) == sorted([b'{"session":"s1","root":"root-1","reason":"stop"}', b"then"])
    await pubsub.aclose()
