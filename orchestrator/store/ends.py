"""Waiting for runs to end: one pub/sub subscription per client, not a stream read per run.

A run's end (`RunStore.end`, the script of `lifecycle.end_run`) publishes the run id on
`Keys.run_ends()` with the terminal write of its record. `EndWatcher.wait(run_id, ended)`
registers the run, makes sure the client's one subscription is listening, then checks
`ended()` (the record) and waits for the run's message. The order (subscribed, then
read) means an end written after the read is always heard.

The end also publishes the record it wrote, when small, on `Keys.run_ended_records()`
(`"<run id>\\n<record JSON>"`), just before the id. The watcher listens to both channels;
a waiter given `heard` is handed the record text of its run's message and, if `heard`
takes it (the waiter decodes and checks it: it is untrusted), returns without a read.
Anything else (no record, corrupt, another run's, not terminal) is the id alone: a read.
A message's record reaches only the waiters of the run it names, and only when they ask.

Pub/sub is fire-and-forget: a dropped connection loses what was published meanwhile. So
every waiter checks `ended()` again when the subscription fails and when it listens
again, and every `poll_s` while it is down. While it listens, a waiter re-checks only
every `idle_poll_s` (a safety net, not the path of an end): with 1,000 runs waiting, a
poll every second was 1,000 record reads a second.

`BatchedReads` sends the reads that waiters ask for in the same pass of the event loop
(their first checks, the checks after a burst of ends) as one MGET.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from redis import exceptions as redis_errors

from orchestrator.aio import cancel_and_wait
from orchestrator.errors import StoreError
from orchestrator.keys import Keys
from orchestrator.store._codec import text
from orchestrator.store.connection import Redis, translate_errors

__all__ = ["BatchedReads", "EndWatcher"]

log = structlog.get_logger(__name__)

_FAILURES: tuple[type[BaseException], ...] = (redis_errors.RedisError, OSError)
# A waiter's re-check while the subscription listens, in `poll_s` (10 s by default).
IDLE_POLLS = 10


class EndWatcher:
    """Futures for runs' ends, woken by `Keys.run_ends()` messages."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        poll_s: float = 1.0,
        idle_poll_s: float | None = None,
    ) -> None:
        """`poll_s`: how often a waiter re-checks while the subscription is down;
        `idle_poll_s` (default `IDLE_POLLS * poll_s`): while it listens."""
        self._redis = redis
        self._channel = keys.run_ends()
        self._records_channel = keys.run_ended_records()
        self._poll_s = poll_s
        self._idle_poll_s = IDLE_POLLS * poll_s if idle_poll_s is None else idle_poll_s
        # A waiter's future: the record text its run's end carried (None: the id alone).
        self._waiters: dict[str, set[asyncio.Future[str | None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._listening: asyncio.Event | None = None
        # True while the subscription listens (messages are heard).
        self._healthy = False

    async def wait(
        self,
        run_id: str,
        ended: Callable[[], Awaitable[bool]],
        heard: Callable[[str], bool] | None = None,
    ) -> None:
        """Return once `ended()` holds, checking it whenever `run_id`'s end is announced,
        whenever the subscription fails or listens again, and every `poll_s` while it is
        down (every `idle_poll_s` while it listens). An announcement carrying the run's
        record is offered to `heard` first: if it returns True, that is the end (no
        `ended()` check)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()
        waiters = self._waiters.setdefault(run_id, set())
        waiters.add(future)
        try:
            await self._listen()
            while not await ended():
                wait_s = self._idle_poll_s if self._healthy else self._poll_s
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await asyncio.shield(future)
                if future.done():  # heard, or spurious: wait for the next one
                    carried = future.result()
                    if carried is not None and heard is not None and heard(carried):
                        return
                    waiters.discard(future)
                    future = loop.create_future()
                    waiters.add(future)
        finally:
            waiters.discard(future)
            if not waiters:
                self._waiters.pop(run_id, None)

    async def close(self) -> None:
        task, self._listener = self._listener, None
        self._healthy = False
        await cancel_and_wait(task)

    async def _listen(self) -> None:
        """Start the subscription if needed; return once it listens (or has failed: the
        poll covers that)."""
        if self._listener is None or self._listener.done():
            self._listening = asyncio.Event()
            self._listener = asyncio.get_running_loop().create_task(
                self._run(self._listening), name="run-end-watcher"
            )
        assert self._listening is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll_s):
                await self._listening.wait()

    async def _run(self, listening: asyncio.Event) -> None:
        failures = 0
        try:
            while True:
                pubsub: Any = self._redis.pubsub(ignore_subscribe_messages=True)
                try:
                    # The records' channel first: an end publishes there first.
                    await pubsub.subscribe(self._records_channel, self._channel)
                    self._healthy = True
                    listening.set()
                    if failures:
                        self._wake_all()  # ends published while it was down were lost
                    failures = 0
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None and message.get("type") == "message":
                            self._heard(message)
                except asyncio.CancelledError:
                    raise
                except _FAILURES as exc:
                    self._healthy = False
                    failures += 1
                    if failures == 1:
                        log.warning("ends.listen_failed", error=str(exc))
                        self._wake_all()  # each waiter re-checks, then polls meanwhile
                    listening.set()  # the waiters poll meanwhile
                    await asyncio.sleep(min(1.0, 0.05 * 2**failures))
                finally:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
        finally:
            self._healthy = False

    def _heard(self, message: dict[str, Any]) -> None:
        data = text(message["data"])
        if text(message.get("channel") or "") != self._records_channel:
            self._wake(data)
            return
        # "<run id>\n<record JSON>": the JSON holds no raw newline (an id may).
        run_id, _, record = data.rpartition("\n")
        if run_id:
            self._wake(run_id, record)

    def _wake(self, run_id: str, record: str | None = None) -> None:
        for future in self._waiters.get(run_id, ()):
            if not future.done():
                future.set_result(record)

    def _wake_all(self) -> None:
        for run_id in list(self._waiters):
            self._wake(run_id)


class BatchedReads:
    """GETs asked for in the same pass of the event loop, sent as one MGET (a client with
    1,000 runs waiting reads their records after a burst of ends in one round trip, not
    one each). A read waits for one more pass of the loop than a GET of its own."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pending: dict[str, asyncio.Future[Any]] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> Any:
        """The value of `key` (None if it has none); `StoreUnavailable` as `GET`."""
        loop = asyncio.get_running_loop()
        if self._pending is None:
            self._pending = {}
            loop.call_soon(self._send)
        future = self._pending.get(key)
        if future is None:
            future = self._pending[key] = loop.create_future()
        # Shielded: a reader that gives up (a timeout) leaves the read to the others.
        return await asyncio.shield(future)

    def _send(self) -> None:
        pending, self._pending = self._pending or {}, None
        task = asyncio.get_running_loop().create_task(self._read(pending))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _read(self, pending: dict[str, asyncio.Future[Any]]) -> None:
        keys = list(pending)
        try:
            async with translate_errors("run get"):
                values = await self._redis.mget(keys)
            if not isinstance(values, list) or len(values) != len(keys):  # untrusted
                raise StoreError(f"MGET of {len(keys)} run records: unexpected reply")
        except asyncio.CancelledError:
            for future in pending.values():
                future.cancel()
            raise
        except Exception as exc:
            for future in pending.values():
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # retrieved: a reader that gave up logs nothing
            return
        for future, value in zip(pending.values(), values, strict=True):
            if not future.done():
                future.set_result(value)
