"""`AbortSignal`: the in-process handle that stops an agent turn.

The ReAct loop only ever looks at an `AbortSignal`. Distributed aborts (a Redis key) are
adapters that call `abort()` on the turn's signal when they see the key, so the loop
behaves the same in-process, on a worker, or in a fork.
"""

from __future__ import annotations

import asyncio

ABORT_SIGNAL_PARAM = "_abort_signal"
# Call-time kwarg of an llm_chat agent: a callable receiving every EventYield of the turn,
# whatever the agent yields (so an observer also works on agents without enable_event).
EVENT_OBSERVER_PARAM = "_event_observer"


class AbortSignal:
    """A one-way latch shared by everything running in one agent turn."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._reason = ""

    def abort(self, reason: str = "") -> None:
        """Ask the turn to stop. Safe to call more than once; the first reason given wins."""
        if reason and not self._reason:
            self._reason = reason
        self._event.set()

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def is_aborted(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        """Return once the signal has been aborted."""
        await self._event.wait()

    def __repr__(self) -> str:
        return f"AbortSignal(aborted={self.is_aborted}, reason={self._reason!r})"
