"""The per-call emitter a tool receives as its `event_emitter` parameter.

`await emitter.emit(name, data)` becomes a `CustomEvent` tagged with the tool's name and
call id, merged into the turn's output stream as it happens. Calling `emitter.emit(...)`
without awaiting it works too: the event is queued at call time.

`ToolEventEmitter()` built by hand (no sink, as in a unit test of a tool) keeps what it
is given: `get_events()` hands the events back. `NoOpEventEmitter` drops everything, so a
tool can be called outside a turn without checking for `None`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import Any

from orchestrator.events import CustomEvent, EventOrigin, EventYield, ReActEvent

__all__ = ["NoOpEventEmitter", "ToolEventEmitter"]


class _Queued:
    """An already-finished awaitable, so `emit` may be awaited or not."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


class ToolEventEmitter:
    """Turns a tool's `emit(name, data)` calls into `CustomEvent`s for one tool call."""

    def __init__(
        self,
        sink: Callable[[CustomEvent], None] | None = None,
        *,
        tool_name: str = "",
        tool_call_id: str = "",
        trace_id: str = "",
        func_name: str = "",
        iteration: int = 0,
    ) -> None:
        self._sink = sink
        self._kept: list[EventYield] = []
        self.tool_name = tool_name
        self.tool_call_id = tool_call_id
        self._trace_id = trace_id
        self._func_name = func_name
        self._iteration = iteration

    def emit(self, event_name: str, data: Any = None) -> _Queued:
        """Publish a custom event now; the returned value may be awaited (or ignored)."""
        self._deliver(
            CustomEvent(
                trace_id=self._trace_id,
                func_name=self._func_name,
                iteration=self._iteration,
                event_name=event_name,
                data=data,
                tool_name=self.tool_name or None,
                tool_call_id=self.tool_call_id or None,
            )
        )
        return _Queued()

    def emit_batch(self, events: Iterable[tuple[str, Any]]) -> _Queued:
        """`emit` each `(event_name, data)` pair, in order."""
        for event_name, data in events:
            self.emit(event_name, data)
        return _Queued()

    def emit_event(self, event: ReActEvent, **_: Any) -> _Queued:
        """Publish a ready-made event. Only `CustomEvent`s join a turn's stream (the loop
        owns the lifecycle events); other kinds are kept for `get_events` only."""
        if isinstance(event, CustomEvent):
            if event.tool_call_id is None and self.tool_call_id:
                event.tool_name, event.tool_call_id = self.tool_name, self.tool_call_id
            self._deliver(event)
        else:
            self._keep(event)
        return _Queued()

    async def get_events(self) -> list[EventYield]:
        """The events this emitter kept (one built without a sink), then forgets them."""
        kept, self._kept = self._kept, []
        return kept

    def has_events(self) -> bool:
        return bool(self._kept)

    def _deliver(self, event: CustomEvent) -> None:
        if self._sink is not None:
            self._sink(event)
        else:
            self._keep(event)

    def _keep(self, event: ReActEvent) -> None:
        origin = EventOrigin(
            session_id="",
            agent_call_id="",
            event_seq=len(self._kept),
            tool_name=self.tool_name or None,
            tool_call_id=self.tool_call_id or None,
        )
        self._kept.append(EventYield(event=event, origin=origin))

    def __repr__(self) -> str:
        return f"ToolEventEmitter(tool={self.tool_name!r}, call={self.tool_call_id!r})"


class NoOpEventEmitter:
    """An emitter that drops every event (a tool called outside a turn)."""

    def emit(self, event_name: str, data: Any = None) -> _Queued:
        return _Queued()

    def emit_batch(self, events: Iterable[tuple[str, Any]]) -> _Queued:
        return _Queued()

    def emit_event(self, event: ReActEvent, **_: Any) -> _Queued:
        return _Queued()

    async def get_events(self) -> list[EventYield]:
        return []

    def has_events(self) -> bool:
        return False
