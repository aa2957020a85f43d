"""Distributed abort: Redis flags, and a watcher that turns them into `AbortSignal`s.

Two flags, both in the session's hash tag:

    run tree   `Keys.run_abort(session, root_run_id)`: one run and every fork of it stop
               (`run.abort()`); never cleared, so queued runs of the tree never start
    session    `Keys.abort(session)`: every run of the session stops (`abort_session`);
               cleared by the next submit into the session, which starts afresh

`AbortFlags` sets, reads and clears them, and pushes each abort on `Keys.aborts()`
(pub/sub). `AbortWatcher` listens there (one subscription per process) and fires the
matching signals at once; as a fallback for a lost message it also runs one polling task
per process for all the turns that process is running: every `interval_s` it reads the
flags of every watched session and run tree with a single MGET, and aborts the signals
whose flag has appeared. With nothing watched there is no polling and no Redis traffic
but the idle subscription.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import structlog
from redis import exceptions as redis_errors

from orchestrator.aio import cancel_and_wait
from orchestrator.errors import PayloadError, StoreError
from orchestrator.keys import Keys
from orchestrator.signals import AbortSignal
from orchestrator.store._codec import dump_json, text
from orchestrator.store.connection import Redis, run_script, run_scripts, translate_errors

__all__ = ["AbortFlags", "AbortWatcher", "decode_reason"]

log = structlog.get_logger(__name__)

# Set a run tree's flag unless it is set, and push the abort either way (a watcher that
# lost the first push polls on the second); the reason rides along only with the push of
# the call that set the flag. KEYS: flag, aborts channel
# ARGV: value, ttl s, push with the reason, push without. Reply: 1 set, 0 was set.
_REQUEST_RUN_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('PUBLISH', KEYS[2], ARGV[3])
  return 1
end
redis.call('PUBLISH', KEYS[2], ARGV[4])
return 0
"""
# The push of `request_run(then=...)`, sent after the flag's SET NX and the caller's writes:
# with the reason if the flag is the one that call set (its value, with its timestamp, is
# still there), else without. Sent with EVAL (it is short): it never meets a Redis that
# lacks it. KEYS: flag, aborts channel; ARGV: value, push with the reason, push without.
_PUSH_RUN_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PUBLISH', KEYS[2], ARGV[2])
else
  redis.call('PUBLISH', KEYS[2], ARGV[3])
end
return 0
"""

# What a signal is watched for: (session_id, root run id or None for the session only).
_Watch = tuple[str, str | None]
# A script call (`connection.run_scripts`): script, keys, args.
_Call = tuple[Any, list[str], list[Any]]


def decode_reason(raw: Any) -> str:
    """The reason stored in an abort key's value.

    The value is JSON `{"reason": ..., "at": ...}`; anything else (someone ran
    `SET ... "stop"` by hand) still means "abort", with the raw text as the reason.
    """
    try:
        value = text(raw)
    except PayloadError:
        return ""
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    reason = parsed.get("reason") if isinstance(parsed, dict) else None
    if isinstance(reason, str):
        return reason
    log.warning("abort.unexpected_value", value=value[:200])
    return value


class AbortFlags:
    """Request, read and clear the abort flags of sessions and run trees."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._request_run = redis.register_script(_REQUEST_RUN_LUA)

    async def request(self, session_id: str, reason: str, ttl_s: int = 86_400) -> bool:
        """Ask every turn of the session to stop. The first reason wins.

        Returns True if this call set the flag, False if it was already set (still a
        success: the session is being aborted either way).
        """
        value = dump_json({"reason": reason, "at": time.time()})
        async with translate_errors("abort request"), self._redis.pipeline(False) as pipe:
            pipe.set(self._keys.abort(session_id), value, nx=True, ex=ttl_s)
            pipe.publish(self._keys.aborts(), dump_json({"session": session_id}))
            created, _ = await pipe.execute()
        return bool(created)

    async def request_run(
        self,
        session_id: str,
        root_run_id: str,
        reason: str,
        ttl_s: int = 86_400,
        *,
        then: Sequence[_Call] = (),
    ) -> bool:
        """Ask one run tree (a root run and its forks) to stop; the first reason wins.

        `then`: script calls (`connection.run_scripts`) sent in the same round trip, run
        after the flag is set and before the push (`Client.abort` queues the tree's
        waiting runs there: a worker that picks one sees the flag, and is woken for them
        before the running ones start ending). Returns True if this call set the flag."""
        value = dump_json({"reason": reason, "at": time.time()})
        key = self._keys.run_abort(session_id, root_run_id)
        push = {"session": session_id, "root": root_run_id}
        # The push carries the reason only if this call set the flag (so it is the
        # flag's): watchers then fire without reading it back.
        keys = [key, self._keys.aborts()]
        pushes = [dump_json({**push, "reason": reason}), dump_json(push)]
        async with translate_errors("abort request"):
            if then:
                return await self._request_run_then(key, value, ttl_s, pushes, then)
            args = [value, str(ttl_s), *pushes]
            created = await run_script(self._redis, self._request_run, keys, args)
        return bool(int(created))

    async def _request_run_then(
        self, key: str, value: str, ttl_s: int, pushes: list[str], then: Sequence[_Call]
    ) -> bool:
        """SET NX the flag, the calls of `then`, the push: one round trip, in this order
        (the flag and the push are a plain command and an EVAL, which Redis always runs;
        a call of `then` whose script Redis lacks is loaded and sent again: still after
        the flag, after the push too)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(key, value, nx=True, ex=ttl_s)
            for script, keys, args in then:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            pipe.eval(_PUSH_RUN_LUA, 2, key, self._keys.aborts(), value, *pushes)
            replies = await pipe.execute(raise_on_error=False)
        missing = []
        for call, reply in zip(then, replies[1:-1], strict=True):
            if isinstance(reply, redis_errors.NoScriptError):
                missing.append(call)
            elif isinstance(reply, Exception):
                raise reply
        for reply in (replies[0], replies[-1]):
            if isinstance(reply, Exception):
                raise reply
        if missing:
            await run_scripts(self._redis, missing)
        return bool(replies[0])

    async def get(self, session_id: str) -> str | None:
        """The session's abort reason ("" is a valid reason), or None when no abort of
        the whole session was requested."""
        async with translate_errors("abort read"):
            raw = await self._redis.get(self._keys.abort(session_id))
        return None if raw is None else decode_reason(raw)

    async def get_for(self, session_id: str, root_run_id: str) -> str | None:
        """Why a run of this tree must stop (its tree's flag, else its session's), or None."""
        names = [self._keys.run_abort(session_id, root_run_id), self._keys.abort(session_id)]
        async with translate_errors("abort read"):
            values = await self._redis.mget(names)
        raw = next((v for v in values if v is not None), None)
        return None if raw is None else decode_reason(raw)

    async def clear(self, session_id: str) -> None:
        """Remove the flag (e.g. before a new turn of the same session starts)."""
        async with translate_errors("abort clear"):
            await self._redis.delete(self._keys.abort(session_id))


class AbortWatcher:
    """Fires registered `AbortSignal`s when their session's (or run tree's) flag appears.

    `watch()` / `unwatch()` are cheap and synchronous; call `start()` once (in the
    process's event loop) and `stop()` at shutdown. A signal is fired at most once and is
    then dropped from the watch list. Redis errors are logged and the poll retried.
    """

    def __init__(self, redis: Redis, keys: Keys, *, interval_s: float = 0.05) -> None:
        self._redis = redis
        self._keys = keys
        self._interval_s = interval_s
        self._watched: dict[_Watch, list[AbortSignal]] = {}
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._running = False
        self.polls = 0  # MGETs issued (for tests and benchmarks)
        self.pushes = 0  # abort messages heard that concerned a watched signal

    def watch(self, session_id: str, signal: AbortSignal, root_run_id: str | None = None) -> None:
        """Abort `signal` when the session's flag appears, or (given `root_run_id`) the
        flag of that run tree."""
        self._keys.abort(session_id)  # reject a bad session id now, not in the poll loop
        signals = self._watched.setdefault((session_id, root_run_id), [])
        if not any(s is signal for s in signals):
            signals.append(signal)
        self._ensure_task()

    def unwatch(self, session_id: str, signal: AbortSignal, root_run_id: str | None = None) -> None:
        """Stop watching for `signal` (no error if it is not watched)."""
        watch = (session_id, root_run_id)
        signals = self._watched.get(watch)
        if signals is None:
            return
        signals[:] = [s for s in signals if s is not signal]
        if not signals:
            del self._watched[watch]

    @property
    def watched_sessions(self) -> list[str]:
        return list(dict.fromkeys(session for session, _ in self._watched))

    async def start(self) -> None:
        """Begin listening for pushed aborts, and polling (a task runs only while
        something is watched)."""
        self._running = True
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name="abort-listener"
            )
        self._ensure_task()

    async def stop(self) -> None:
        """Stop polling; watched signals stay registered but are no longer fired."""
        self._running = False
        task, self._task = self._task, None
        await cancel_and_wait(task)
        listener, self._listener = self._listener, None
        await cancel_and_wait(listener)

    async def _listen(self) -> None:
        """Fire watched signals as soon as their abort is pushed. The message only says
        which flag was set: the flag itself (one MGET) gives the reason."""
        failures = 0
        while self._running:
            pubsub: Any = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._keys.aborts())
                failures = 0
                while self._running:
                    message = await pubsub.get_message(timeout=1.0)
                    pushed = message is not None and message.get("type") == "message"
                    if pushed:
                        await self._on_push(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away or a bad message: the poll goes on
                failures += 1
                if failures == 1:
                    log.warning("abort.listen_failed", error=str(exc))
                await asyncio.sleep(min(1.0, self._interval_s * 2**failures))
            finally:
                try:
                    await pubsub.aclose()
                except Exception as exc:  # closing a broken connection
                    log.debug("abort.listen_close_failed", error=str(exc))

    async def _on_push(self, raw: Any) -> None:
        """A pushed abort (untrusted JSON): fire the run tree's signals with the reason it
        carries, or read the flags it names (one MGET) when it carries none."""
        try:
            data = json.loads(raw)
            session = data["session"]
            root = data.get("root")
            reason = data.get("reason")
        except (ValueError, TypeError, KeyError, AttributeError):
            return
        if not any(s == session and (root is None or r == root) for s, r in self._watched):
            return
        self.pushes += 1
        if isinstance(root, str) and isinstance(reason, str):
            # The flag of this tree was just set with this reason: what a poll would read.
            self._fire((session, root), reason)
        else:
            await self.poll_once()

    async def poll_once(self) -> int:
        """Check every watched flag now (one MGET); returns how many signals were fired."""
        watches = list(self._watched)
        if not watches:
            return 0
        names = list(dict.fromkeys(name for w in watches for name in self._flag_names(w)))
        async with translate_errors("abort poll"):
            values = await self._redis.mget(names)
        self.polls += 1
        found = {name: raw for name, raw in zip(names, values, strict=True) if raw is not None}
        fired = 0
        for watch in watches:
            raw = next((found[n] for n in self._flag_names(watch) if n in found), None)
            if raw is not None:
                fired += self._fire(watch, decode_reason(raw))
        return fired

    def _flag_names(self, watch: _Watch) -> list[str]:
        """The flags of a watch, the run tree's first (its reason wins)."""
        session_id, root_run_id = watch
        session = self._keys.abort(session_id)
        if root_run_id is None:
            return [session]
        return [self._keys.run_abort(session_id, root_run_id), session]

    def _fire(self, watch: _Watch, reason: str) -> int:
        signals = self._watched.pop(watch, [])
        for signal in signals:
            signal.abort(reason)
        if signals:
            log.info(
                "abort.fired",
                session_id=watch[0],
                root_run_id=watch[1],
                reason=reason,
                signals=len(signals),
            )
        return len(signals)

    def _ensure_task(self) -> None:
        if self._running and self._watched and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(
                self._poll_loop(), name="abort-watcher"
            )

    async def _poll_loop(self) -> None:
        failures = 0
        while self._running and self._watched:
            try:
                await self.poll_once()
                failures = 0
            except StoreError as exc:
                failures += 1
                if failures == 1:  # once per outage, not once per poll
                    log.warning("abort.poll_failed", attempt=failures, error=str(exc))
                await asyncio.sleep(min(1.0, self._interval_s * 2**failures))
                continue
            await asyncio.sleep(self._interval_s)
