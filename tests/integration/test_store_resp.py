"""The lean connections keep redis-py's guarantees: a read that outlasts the timeout fails
(once, and only then, however many reads came before), a connection with an unread reply
is never lent again, and everything works without hiredis' parser and packer too.

A private redis-server (`redisproc.RedisServer`): these tests block, flush scripts and
break connections on purpose, which the shared Redis must not see."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import exceptions as redis_errors
from redis._parsers import _AsyncRESP2Parser

from orchestrator.store import resp
from orchestrator.store.connection import Redis, connect, is_unavailable, run_script, run_scripts
from tests.integration.redisproc import REDIS_SERVER, BlackHole, RedisServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(REDIS_SERVER is None, reason="no redis-server binary on PATH"),
]

ECHO = "return {KEYS[1], ARGV[1]}"
TIMEOUT_S = 0.4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    made = RedisServer(Path(tmp_path_factory.mktemp("resp-redis")))
    made.start()
    try:
        yield made
    finally:
        made.stop()


def _on_loops(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `scenario` on asyncio's loop and on uvloop (the worker's, when installed)."""
    asyncio.run(scenario())
    try:
        import uvloop
    except ImportError:
        return
    uvloop.run(scenario())


async def _blocked_read_fails(client: Redis) -> float:
    """Seconds until a read Redis answers only after 3 s fails (BLPOP on an empty list)."""
    started = time.monotonic()
    with pytest.raises(redis_errors.TimeoutError):
        await resp.call(client.connection_pool, ("BLPOP", "resp:never", 3))
    return time.monotonic() - started


@pytest.mark.timeout(60)
def test_a_read_that_outlasts_the_timeout_fails_and_the_connection_recovers(
    server: RedisServer,
) -> None:
    async def scenario() -> None:
        client = connect(server.url, timeout_s=TIMEOUT_S)
        try:
            took = await _blocked_read_fails(client)
            assert TIMEOUT_S * 0.9 <= took < TIMEOUT_S + 1.0
            assert await client.ping()  # a fresh connection: the timed-out one was closed
            script = client.register_script(ECHO)
            assert await run_script(client, script, ["k"], ["v"]) == [b"k", b"v"]
        finally:
            await client.aclose()

    _on_loops(scenario)


@pytest.mark.timeout(60)
def test_many_quick_reads_over_several_timeouts_never_time_out_and_a_slow_one_still_does(
    server: RedisServer,
) -> None:
    """One watchdog timer per connection follows every read's deadline."""

    async def scenario() -> None:
        client = connect(server.url, timeout_s=TIMEOUT_S)
        script = client.register_script(ECHO)
        try:
            ends = time.monotonic() + TIMEOUT_S * 3
            while time.monotonic() < ends:
                assert await run_script(client, script, ["k"], [b"v"]) == [b"k", b"v"]
                assert await client.ping()
                await asyncio.sleep(TIMEOUT_S / 7)
            took = await _blocked_read_fails(client)
            assert TIMEOUT_S * 0.9 <= took < TIMEOUT_S + 1.0
        finally:
            await client.aclose()

    _on_loops(scenario)


@pytest.mark.timeout(30)
def test_a_redis_that_never_answers_is_unavailable_after_the_timeout() -> None:
    async def scenario() -> None:
        with BlackHole() as hole:
            client = connect(hole.url, timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S)
            script = client.register_script(ECHO)
            started = time.monotonic()
            with pytest.raises((redis_errors.TimeoutError, redis_errors.ConnectionError)) as caught:
                await run_script(client, script, ["k"], ["v"])
            assert is_unavailable(caught.value), caught.value
            assert time.monotonic() - started < TIMEOUT_S * 2 + 1.0
            await client.aclose()

    _on_loops(scenario)


async def test_a_connection_given_back_with_an_unread_reply_is_not_lent_as_it_is(
    server: RedisServer,
) -> None:
    client = connect(server.url, max_connections=1)
    try:
        await client.set("resp:k", b"mine")
        pool = client.connection_pool
        conn = await pool.get_connection()
        await conn.send_command("ECHO", "stale")  # never read
        await pool.release(conn)
        await asyncio.sleep(0.1)  # the stale reply has arrived
        assert await client.get("resp:k") == b"mine"
    finally:
        await client.delete("resp:k")
        await client.aclose()


async def test_pipelined_scripts_reload_what_redis_lost_and_raise_a_refused_call(
    server: RedisServer,
) -> None:
    client = connect(server.url)
    try:
        echo = client.register_script(ECHO)
        fail = client.register_script("return redis.error_reply('NOPE')")
        assert await run_scripts(client, [(echo, ["a"], [1]), (echo, ["b"], [2.5])]) == [
            [b"a", b"1"],
            [b"b", b"2.5"],
        ]
        await client.script_flush()
        assert await run_script(client, echo, ["c"], ["x"]) == [b"c", b"x"]
        await client.script_flush()
        with pytest.raises(redis_errors.ResponseError, match="NOPE"):
            await run_scripts(client, [(echo, ["d"], ["y"]), (fail, [], [])])
        assert await client.ping()  # the connection is still in step
    finally:
        await client.aclose()


async def test_scripts_run_without_hiredis_parser_and_packer(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resp, "HIREDIS_PACKER", None)
    client = connect(server.url, parser_class=_AsyncRESP2Parser, timeout_s=TIMEOUT_S)
    try:
        script = client.register_script(ECHO)
        payload: Any = "ü" * 10_000
        assert await run_script(client, script, ["k"], [payload]) == [b"k", payload.encode()]
        replies = await run_scripts(client, [(script, ["a"], [1]), (script, ["b"], [b"2"])])
        assert replies == [[b"a", b"1"], [b"b", b"2"]]
        took = await _blocked_read_fails(client)
        assert TIMEOUT_S * 0.9 <= took < TIMEOUT_S + 1.0
    finally:
        await client.aclose()


async def test_script_calls_made_together_share_one_round_trip(server: RedisServer) -> None:
    """A worker's many turns flush, start and end in the same pass of its loop: their
    calls go out together on one connection, each with its own reply (and a refused one
    fails alone), instead of one connection and one write each."""
    client = connect(server.url)
    try:
        echo = client.register_script(ECHO)
        fail = client.register_script("return redis.error_reply('NOPE')")
        await run_script(client, echo, ["warm"], [0])  # loaded, one connection open
        calls = [run_script(client, echo, [f"k{i}"], [i]) for i in range(20)]
        refused = run_script(client, fail, [], [])
        replies = await asyncio.gather(*calls, refused, return_exceptions=True)
        assert replies[:20] == [[f"k{i}".encode(), str(i).encode()] for i in range(20)]
        assert isinstance(replies[20], redis_errors.ResponseError)
        assert "NOPE" in str(replies[20])
        # One connection did it all (this server serves only this test's client).
        assert len(await client.client_list()) == 1
    finally:
        await client.aclose()


async def test_a_caller_that_gives_up_leaves_the_calls_sent_with_its_own_alone(
    server: RedisServer,
) -> None:
    client = connect(server.url)
    try:
        setter = client.register_script("return redis.call('SET', KEYS[1], ARGV[1])")
        await run_script(client, setter, ["resp:warm"], ["1"])
        kept = asyncio.create_task(run_script(client, setter, ["resp:kept"], ["1"]))
        gave_up = asyncio.create_task(run_script(client, setter, ["resp:gave-up"], ["1"]))
        await asyncio.sleep(0)  # both are in one batch
        gave_up.cancel()
        assert await kept == b"OK"
        with pytest.raises(asyncio.CancelledError):
            await gave_up
        assert await client.exists("resp:kept") == 1
        assert await run_script(client, setter, ["resp:after"], ["1"]) == b"OK"
    finally:
        await client.delete("resp:warm", "resp:kept", "resp:gave-up", "resp:after")
        await client.aclose()


async def test_a_call_cancelled_before_it_is_sent_is_never_sent(server: RedisServer) -> None:
    """The first call of a pass waits that pass for others to join it: cancelled then,
    it never reaches Redis (and the calls that joined it still do)."""
    client = connect(server.url)
    try:
        setter = client.register_script("return redis.call('SET', KEYS[1], ARGV[1])")
        await run_script(client, setter, ["resp:warm"], ["1"])
        dropped = asyncio.create_task(run_script(client, setter, ["resp:dropped"], ["1"]))
        joined = asyncio.create_task(run_script(client, setter, ["resp:joined"], ["1"]))
        await asyncio.sleep(0)  # the first waits for its pass to end, the second joined it
        dropped.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dropped
        assert await joined == b"OK"
        assert await client.exists("resp:dropped") == 0
    finally:
        await client.delete("resp:warm", "resp:dropped", "resp:joined")
        await client.aclose()


async def test_a_script_error_of_a_connection_error_kind_fails_only_its_caller(
    server: RedisServer,
) -> None:
    """A script's error reply is text the script chose (untrusted): one starting with
    LOADING (redis-py reads it as a ConnectionError kind) fails its own call only; a
    call sent with it in one write, whose script ran, gets its reply."""
    client = connect(server.url)
    try:
        setter = client.register_script("return redis.call('SET', KEYS[1], ARGV[1])")
        odd = client.register_script("return redis.error_reply('LOADING not really')")
        await run_script(client, setter, ["review:warm"], ["1"])
        with pytest.raises(redis_errors.RedisError):
            await run_script(client, odd, [], [])
        mine = asyncio.create_task(run_script(client, setter, ["review:mine"], ["1"]))
        theirs = asyncio.create_task(run_script(client, odd, [], []))
        done = await asyncio.gather(mine, theirs, return_exceptions=True)
        assert await client.get("review:mine") == b"1"
        assert isinstance(done[1], redis_errors.RedisError)
        assert done[0] == b"OK", f"an answered call failed with {done[0]!r}"
    finally:
        await client.delete("review:warm", "review:mine")
        await client.aclose()
