"""The input stream of an interactive session (SimpleLLMFunc's `hooks.input_stream`).

A front end receives what the user types as `UserInputEvent`s; `AgentInputRouter`
decides where each goes. A tool waiting for input (it announced a request, e.g. with a
custom event naming a request id) gets the next input first; otherwise, or with
`force_chat=True`, the text starts a new chat turn.

    router = AgentInputRouter(submit_tool_input=deliver)   # deliver(request_id, text) -> bool
    router.register_tool_request("call_1", "req_1", "Name: ")
    router.route_input(UserInputEvent("Ada"))              # route "tool": deliver("req_1", "Ada")
    router.route_input(UserInputEvent("hello"))            # route "chat", chat_text "hello"

`submit_tool_input` returning False (or raising) means the request expired: it is
dropped and the next pending one is tried; if none takes it the route is "rejected".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import structlog

__all__ = ["AgentInputRouter", "InputRouteResult", "ToolInputRequest", "UserInputEvent"]

_log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class UserInputEvent:
    """One input from the user; `request_id` targets one tool request, `force_chat`
    skips pending tool requests."""

    text: str
    request_id: str | None = None
    force_chat: bool = False


@dataclass(frozen=True)
class ToolInputRequest:
    """A tool call waiting for input."""

    request_id: str
    tool_call_id: str
    prompt: str = ""


@dataclass(frozen=True)
class InputRouteResult:
    """Where one input went: "chat", "tool", "noop" (empty chat text) or "rejected"."""

    route: Literal["chat", "tool", "noop", "rejected"]
    chat_text: str = ""
    submitted_text: str = ""
    request: ToolInputRequest | None = None
    reason: str = ""


class AgentInputRouter:
    """Routes user input to pending tool-input requests first, else to the chat."""

    def __init__(self, submit_tool_input: Callable[[str, str], bool]) -> None:
        self._submit = submit_tool_input
        self._pending: dict[str, ToolInputRequest] = {}  # in arrival order

    def register_tool_request(self, tool_call_id: str, request_id: str, prompt: str = "") -> None:
        self._pending[request_id] = ToolInputRequest(request_id, tool_call_id, prompt)

    def clear_tool_requests(self, tool_call_id: str) -> None:
        """Forget the requests of one tool call (it ended)."""
        for request_id, request in list(self._pending.items()):
            if request.tool_call_id == tool_call_id:
                del self._pending[request_id]

    def clear_all_requests(self) -> None:
        self._pending.clear()

    def has_pending_tool_requests(self) -> bool:
        return bool(self._pending)

    def peek_pending_tool_request(self) -> ToolInputRequest | None:
        return next(iter(self._pending.values()), None)

    def route_input(self, event: UserInputEvent) -> InputRouteResult:
        if self._pending and not event.force_chat:
            return self._to_tool(event)
        text = event.text.strip()
        if not text:
            return InputRouteResult(route="noop")
        return InputRouteResult(route="chat", chat_text=text)

    def _to_tool(self, event: UserInputEvent) -> InputRouteResult:
        candidates = [event.request_id] if event.request_id else list(self._pending)
        for request_id in candidates:
            request = self._pending.pop(request_id, None)
            if request is None:
                continue
            if self._deliver(request, event.text):
                return InputRouteResult(route="tool", request=request, submitted_text=event.text)
        return InputRouteResult(
            route="rejected", reason="Tool input request expired before it could be submitted."
        )

    def _deliver(self, request: ToolInputRequest, text: str) -> bool:
        try:
            return bool(self._submit(request.request_id, text))
        except Exception:
            _log.exception("tool input delivery failed", request_id=request.request_id)
            return False
