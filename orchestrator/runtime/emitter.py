"""The per-call emitter a tool receives as its `event_emitter` parameter.

`await emitter.emit(name, data)` becomes a `CustomEvent` tagged with the tool's name and
call id, merged into the turn's output stream as it happens. Calling `emitter.emit(...)`
without awaiting it works too: the event is queued at call time.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from orchestrator.events import CustomEvent


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
        sink: Callable[[CustomEvent], None],
        *,
        tool_name: str,
        tool_call_id: str,
        trace_id: str = "",
        func_name: str = "",
        iteration: int = 0,
    ) -> None:
        self._sink = sink
        self.tool_name = tool_name
        self.tool_call_id = tool_call_id
        self._trace_id = trace_id
        self._func_name = func_name
        self._iteration = iteration

    def emit(self, event_name: str, data: Any = None) -> _Queued:
        """Publish a custom event now; the returned value may be awaited (or ignored)."""
        self._sink(
            CustomEvent(
                trace_id=self._trace_id,
                func_name=self._func_name,
                iteration=self._iteration,
                event_name=event_name,
                data=data,
                tool_name=self.tool_name,
                tool_call_id=self.tool_call_id,
            )
        )
        return _Queued()

    def __repr__(self) -> str:
        return f"ToolEventEmitter(tool={self.tool_name!r}, call={self.tool_call_id!r})"
