"""The narrow bridge from the code's `runtime` to the turn's runtime primitives.

Code in the sandbox calls `runtime.selfref.context.remember("...")`; the child sends
`{"type": "call", "op": "selfref.context.remember", "args": [...], "kwargs": {...}}` and
waits. The worker answers here, with the turn's own `ToolRuntime` (its SelfReference
memory, its forks): an explicit list of primitives, JSON in and out. The sandbox never
holds a Redis connection or anything else of the worker's.

`LiveBridge` performs the calls and records each reply, so the session journal can
replay the cell later without performing them again: `ReplayBridge` answers a replayed
cell's calls from that record (no memory written twice, no fork spawned twice).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from pydantic_core import PydanticSerializationError, to_jsonable_python

from orchestrator.errors import ToolError
from orchestrator.runtime.forks import SuspendTurn

__all__ = ["PRIMITIVES", "LiveBridge", "ReplayBridge"]

LISTING = "runtime.list_primitives"

# What the code can reach: name -> how to find it on the turn's ToolRuntime.
PRIMITIVES: dict[str, Callable[[Any], Any]] = {
    "selfref.guide": lambda rt: rt.selfref.guide,
    "selfref.context.inspect": lambda rt: rt.selfref.context.inspect,
    "selfref.context.remember": lambda rt: rt.selfref.context.remember,
    "selfref.context.forget": lambda rt: rt.selfref.context.forget,
    "selfref.context.compact": lambda rt: rt.selfref.context.compact,
    "selfref.fork.spawn": lambda rt: rt.selfref.fork.spawn,
    "selfref.fork.gather_all": lambda rt: rt.selfref.fork.gather_all,
}


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"type": kind, "message": message}}


def available(runtime: Any) -> list[str]:
    """The primitives this turn offers (selfref ones only with a SelfReference)."""
    names = [LISTING]
    if runtime is not None and getattr(runtime, "has_selfref", False):
        names.extend(PRIMITIVES)
    return sorted(names)


class LiveBridge:
    """Answers the code's calls with the turn's runtime; records every reply."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.calls: list[dict[str, Any]] = []
        self.suspended: SuspendTurn | None = None

    async def __call__(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message.get("op")
        reply = await self._perform(message)
        if not reply.get("suspend"):
            self.calls.append({"op": op, "reply": reply})
        return reply

    async def _perform(self, message: dict[str, Any]) -> dict[str, Any]:
        op, args, kwargs = message.get("op"), message.get("args"), message.get("kwargs")
        if not isinstance(op, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
            return _error("TypeError", "a runtime call needs op (str), args (list), kwargs (dict)")
        names = available(self.runtime)
        if op == LISTING:
            return self._listing(names, args, kwargs)
        if op not in PRIMITIVES:
            return _error(
                "AttributeError",
                f"runtime.{op} is not a runtime primitive; available here: {', '.join(names)}",
            )
        if self.runtime is None:
            return _error("RuntimeError", f"runtime.{op} needs an agent turn (none is running)")
        try:
            target = PRIMITIVES[op](self.runtime)
            inspect.signature(target).bind(*args, **kwargs)
            result = target(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return {"ok": True, "value": to_jsonable_python(result)}
        except SuspendTurn as exc:
            self.suspended = exc
            return {"ok": False, "suspend": True}
        except asyncio.CancelledError:
            raise
        except PydanticSerializationError as exc:
            return _error("TypeError", f"runtime.{op} returned a value JSON cannot carry: {exc}")
        except Exception as exc:
            return _error(type(exc).__name__, str(exc))

    @staticmethod
    def _listing(names: list[str], args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        prefix, contains = kwargs.get("prefix"), kwargs.get("contains")
        if args or set(kwargs) - {"prefix", "contains"}:
            return _error("TypeError", "list_primitives(prefix=None, *, contains=None)")
        found = [
            n
            for n in names
            if (not isinstance(prefix, str) or n.startswith(prefix))
            and (not isinstance(contains, str) or contains in n)
        ]
        return {"ok": True, "value": found}


class ReplayBridge:
    """Answers a replayed cell's calls with the replies recorded when it first ran."""

    def __init__(self, calls: Any) -> None:
        if not isinstance(calls, list):
            raise ToolError("a journal entry's calls must be a list")
        self._calls = list(calls)
        self.diverged: str | None = None

    async def __call__(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message.get("op")
        recorded = self._calls.pop(0) if self._calls else None
        reply = recorded.get("reply") if isinstance(recorded, dict) else None
        if (
            not isinstance(recorded, dict)
            or recorded.get("op") != op
            or not isinstance(reply, dict)
        ):
            self.diverged = f"runtime.{op} was not called there originally"
            return _error("RuntimeError", f"replay diverged: {self.diverged}")
        return reply
