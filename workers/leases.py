"""Lease renewal that a busy event loop cannot starve.

`LeaseKeeper` renews the leases of every turn running in this process from a thread of
its own, with its own event loop and Redis connection: a turn that keeps the worker's
event loop busy (a batch of a thousand spawns, a tool that computes) still holds its
lease, so its run is not resumed elsewhere while it makes progress.

Liveness is still the process's: a SIGKILLed or frozen worker stops renewing, and so does
one whose event loop has not turned at all for `loop_stall_s` (a tick task on the worker's
loop proves it turns), so a wedged process is resumed elsewhere instead of holding its
runs for ever. A renewal that finds the lease taken by a later attempt calls the turn's
`on_lost` on the worker's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from orchestrator.aio import cancel_and_wait
from orchestrator.errors import OrchestratorError, StoreUnavailable
from orchestrator.keys import Keys
from orchestrator.settings import Settings
from orchestrator.store.connection import Redis, connect
from orchestrator.store.runs import LeaseTable
from workers.outage import Outage

__all__ = ["Hold", "LeaseKeeper"]

_log = structlog.get_logger(__name__)

_TICK_S = 0.2


@dataclass(eq=False)
class Hold:
    """One attempt's lease, held by the keeper until `LeaseKeeper.drop`."""

    run_id: str
    attempt: int
    on_lost: Callable[[], None] = field(repr=False)


class LeaseKeeper:
    """Renews the leases of this process's running turns from a thread of its own."""

    def __init__(self, settings: Settings, keys: Keys, worker_id: str) -> None:
        self._settings = settings
        self._keys = keys
        self._worker_id = worker_id
        self.interval_s = settings.lease_ttl_s / 3
        self._held: dict[str, Hold] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._last_tick = time.monotonic()
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread_task: asyncio.Task[None] | None = None
        self._stopped = threading.Event()
        self.renewals = 0  # successful renewal passes (tests, metrics)

    # -- called on the worker's loop ---------------------------------------------------

    def start(self) -> None:
        """Start the tick task on the running loop and the renewal thread."""
        self._loop = asyncio.get_running_loop()
        self._last_tick = time.monotonic()
        self._tick_task = self._loop.create_task(self._tick_forever(), name="lease-keeper-tick")
        self._stopped.clear()
        self._thread = threading.Thread(target=self._thread_main, name="lease-keeper", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stopped.set()
        loop, task = self._thread_loop, self._thread_task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed
                loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            # A daemon thread: never hold up the worker's shutdown for long on it.
            await asyncio.to_thread(self._thread.join, self.interval_s + 1.0)
        await cancel_and_wait(self._tick_task)

    def hold(self, run_id: str, attempt: int, on_lost: Callable[[], None]) -> Hold:
        """Keep renewing this attempt's lease (it must already hold it) until `drop`."""
        hold = Hold(run_id, attempt, on_lost)
        with self._lock:
            self._held[run_id] = hold
        return hold

    def drop(self, hold: Hold) -> None:
        """Stop renewing (call before parking, releasing or handing the lease back)."""
        with self._lock:
            if self._held.get(hold.run_id) is hold:
                del self._held[hold.run_id]

    @property
    def held(self) -> list[str]:
        with self._lock:
            return list(self._held)

    async def _tick_forever(self) -> None:
        while True:
            self._last_tick = time.monotonic()
            await asyncio.sleep(_TICK_S)

    # -- the renewal thread ------------------------------------------------------------

    def _thread_main(self) -> None:
        asyncio.run(self._renew_forever())

    async def _renew_forever(self) -> None:
        self._thread_loop = asyncio.get_running_loop()
        self._thread_task = asyncio.current_task()
        # Its own connections, with a timeout below the renewal interval: a renewal that
        # hangs gives up before the next one is due.
        redis = connect(
            self._settings.redis_url,
            timeout_s=self.interval_s,
            connect_timeout_s=self.interval_s,
        )
        leases = LeaseTable(redis, self._keys)
        outage = Outage("lease renewal", first_delay_s=0.1, max_delay_s=0.5)
        stalled = False
        try:
            while not self._stopped.is_set():
                delay = self.interval_s
                stalled = self._check_stall(stalled)
                if not stalled:
                    delay = await self._renew_all(leases, outage)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            pass
        finally:
            await _close(redis)

    def _check_stall(self, stalled: bool) -> bool:
        silent = time.monotonic() - self._last_tick
        now_stalled = silent > self._settings.loop_stall_s
        if now_stalled and not stalled:
            _log.error(
                "event loop stalled; letting this worker's leases lapse",
                silent_s=round(silent, 1),
                leases=len(self.held),
            )
        elif stalled and not now_stalled:
            _log.warning("event loop turns again; renewing leases")
        return now_stalled

    async def _renew_all(self, leases: LeaseTable, outage: Outage) -> float:
        """One pass over every held lease, in one round trip; returns the delay before
        the next pass."""
        with self._lock:
            held = list(self._held.values())
        if not held:
            return self.interval_s
        try:
            results = await leases.renew_many(
                [(hold.run_id, hold.attempt) for hold in held],
                worker_id=self._worker_id,
                ttl_s=self._settings.lease_ttl_s,
                extend_only=True,
            )
        except StoreUnavailable as exc:
            return outage.failed(exc)  # retry soon: the lease clock keeps running
        except OrchestratorError as exc:
            _log.warning("lease renewal failed", error=str(exc))
            return self.interval_s
        for hold, owned in zip(held, results, strict=True):
            if owned is False:
                self._lost(hold)
        corrupt = [hold.run_id for hold, owned in zip(held, results, strict=True) if owned is None]
        if corrupt:
            _log.warning("lease renewal failed: corrupt lease owner records", runs=corrupt)
        else:
            outage.recovered()
            self.renewals += 1
        return self.interval_s

    def _lost(self, hold: Hold) -> None:
        with self._lock:
            current = self._held.get(hold.run_id) is hold
            if current:
                del self._held[hold.run_id]
        if current and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the worker's loop has closed
                self._loop.call_soon_threadsafe(hold.on_lost)


async def _close(redis: Redis) -> None:
    with contextlib.suppress(OrchestratorError, OSError, RuntimeError):
        await redis.aclose()
