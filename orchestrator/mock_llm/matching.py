"""Whether a rule's `match` conditions hold for a request. Every text test ignores case;
`api_key` compares exactly."""

from __future__ import annotations

import re
from collections.abc import Callable

from orchestrator.mock_llm.request import ChatRequest, Message
from orchestrator.mock_llm.script import Match

_Check = Callable[[Match, ChatRequest], bool]


def _contains(message: Message | None, needle: str) -> bool:
    return message is not None and needle.lower() in message.text.lower()


def _last_user_contains(match: Match, request: ChatRequest) -> bool:
    needle = match.last_user_contains
    return needle is None or _contains(request.last("user"), needle)


def _last_role(match: Match, request: ChatRequest) -> bool:
    return match.last_role is None or request.messages[-1].role == match.last_role


def _last_tool_result_contains(match: Match, request: ChatRequest) -> bool:
    needle = match.last_tool_result_contains
    return needle is None or _contains(request.last("tool"), needle)


def _any_contains(match: Match, request: ChatRequest) -> bool:
    needle = match.any_contains
    return needle is None or any(_contains(m, needle) for m in request.messages)


def _system_contains(match: Match, request: ChatRequest) -> bool:
    needle = match.system_contains
    return needle is None or _contains(request.first("system"), needle)


def _tool_results_since_user(match: Match, request: ChatRequest) -> bool:
    count = match.tool_results_since_user
    return count is None or len(request.tool_results_since_user()) == count


def _tools_offered(match: Match, request: ChatRequest) -> bool:
    return match.tools_offered is None or match.tools_offered in request.tool_names


def _no_tools_offered(match: Match, request: ChatRequest) -> bool:
    wanted = match.no_tools_offered
    return wanted is None or wanted == (not request.tool_names)


def _regex(match: Match, request: ChatRequest) -> bool:
    return match.regex is None or regex_groups(match, request) is not None


def _api_key(match: Match, request: ChatRequest) -> bool:
    return match.api_key is None or match.api_key == request.api_key


_CHECKS: tuple[_Check, ...] = (
    _last_user_contains,
    _last_role,
    _last_tool_result_contains,
    _any_contains,
    _system_contains,
    _tool_results_since_user,
    _tools_offered,
    _no_tools_offered,
    _regex,
    _api_key,
)


def matches(match: Match, request: ChatRequest) -> bool:
    """True when every condition given in `match` holds (an empty match always holds)."""
    return all(check(match, request) for check in _CHECKS)


def regex_groups(match: Match, request: ChatRequest) -> tuple[str, ...] | None:
    """The groups of `match.regex` searched in the last user message (None: no match).

    Groups that took part in no match come back as empty strings.
    """
    if match.regex is None:
        return ()
    last_user = request.last("user")
    if last_user is None:
        return None
    found = re.search(match.regex, last_user.text, re.IGNORECASE | re.DOTALL)
    if found is None:
        return None
    return tuple(group or "" for group in found.groups())
