"""How an `llm_chat` call becomes the first messages of a turn (SimpleLLMFunc's rules).

- The docstring is the system prompt, formatted with the call's `_template_params`
  (the raw docstring when formatting fails).
- The history parameter is `history` or `chat_history`; anything but a list of dicts is
  ignored with a warning. Its last `system` message overrides the docstring; other
  system messages are dropped.
- The user message is the other arguments as `name: value` lines, None and "" skipped.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import structlog

from orchestrator.events import Message, MessageList

HISTORY_PARAM_NAMES: tuple[str, ...] = ("history", "chat_history")

_log = structlog.get_logger(__name__)


def format_system_prompt(docstring: str, template_params: Mapping[str, Any] | None) -> str:
    """The docstring with `{placeholders}` filled in; unchanged if that fails."""
    text = inspect.cleandoc(docstring) if docstring else ""
    if not template_params:
        return text
    try:
        return text.format(**template_params)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        _log.warning("system prompt template not applied", error=str(exc))
        return text


def history_param_name(signature: inspect.Signature) -> str | None:
    """Which of `history` / `chat_history` the function declares, if any."""
    for name in HISTORY_PARAM_NAMES:
        if name in signature.parameters:
            return name
    return None


def valid_history(value: Any, *, func_name: str) -> MessageList | None:
    """The history as a message list, or None (with a warning) when it is not one."""
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return [dict(item) for item in value]
    _log.warning(
        "history is not a list of message dicts; ignored",
        func_name=func_name,
        history_type=type(value).__name__,
    )
    return None


def split_system(history: MessageList) -> tuple[str | None, MessageList]:
    """The last system message's text (if any) and the history without system messages."""
    override: str | None = None
    rest: MessageList = []
    for message in history:
        if message.get("role") == "system":
            content = message.get("content")
            override = content if isinstance(content, str) else str(content)
        else:
            rest.append(message)
    return override, rest


def render_user_message(arguments: Mapping[str, Any]) -> str:
    """`name: value` lines for the call's arguments, skipping None and ""."""
    lines = [
        f"{name}: {value}" for name, value in arguments.items() if value is not None and value != ""
    ]
    return "\n".join(lines)


def build_messages(
    system_prompt: str,
    history: MessageList,
    user_message: str | list[dict[str, Any]],
) -> MessageList:
    """system + history + user, leaving out an empty system prompt or user message."""
    messages: MessageList = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.extend(history)
    if user_message:
        user: Message = {"role": "user", "content": user_message}
        messages.append(user)
    return messages
