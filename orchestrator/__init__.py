"""orchestrator: SimpleLLMFunc-style agents, run as arq jobs with events on Redis streams.

Code written for SimpleLLMFunc runs after changing the import:

    from orchestrator import OpenAICompatible, llm_chat, tool

and the same agents run on a cluster of workers:

    client = await orchestrator.connect("redis://127.0.0.1:6379/0")
    run = await client.submit("myapp.agents:weather_chat", "Weather in Paris?")

`__all__` is the public API: what the README and docs/ teach (a test keeps the two in
step). The client's names (`connect`, `Client`, `Run`, `RunResult`) are imported on
first use, so `import orchestrator` for an in-process agent does not load the Redis
client; the edges (`orchestrator.api`, `orchestrator.cli`, `orchestrator.bench`) are
never imported from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from orchestrator.errors import (
    AbortedError,
    AgentError,
    ConfigError,
    LLMError,
    LLMHTTPError,
    LLMResponseError,
    LLMRetriesExhausted,
    MemoryLimitError,
    OrchestratorError,
    OutputParseError,
    PayloadError,
    RunError,
    RunNotFound,
    SessionNotOwned,
    StoreError,
    StoreUnavailable,
    ToolError,
    UnknownAgent,
)
from orchestrator.events import (
    CustomEvent,
    EventOrigin,
    EventYield,
    ReActEvent,
    ReActEventType,
    ResponseYield,
)
from orchestrator.llm import DEFAULT_CONTEXT_WINDOW, APIKeyPool, OpenAICompatible
from orchestrator.runtime.chat import DEFAULT_MAX_TOOL_CALLS, async_llm_chat, llm_chat
from orchestrator.runtime.function import async_llm_function, llm_function
from orchestrator.runtime.long_output import TOO_LONG_TO_FILE_MAX_TOKENS
from orchestrator.runtime.prompt import HISTORY_PARAM_NAMES
from orchestrator.runtime.selfref import SelfReference
from orchestrator.runtime.tools import Tool, tool
from orchestrator.settings import Settings
from orchestrator.signals import ABORT_SIGNAL_PARAM, AbortSignal

if TYPE_CHECKING:
    from orchestrator.client import Client, Run, RunResult, connect

__all__ = [
    "ABORT_SIGNAL_PARAM",
    "DEFAULT_CONTEXT_WINDOW",
    "DEFAULT_MAX_TOOL_CALLS",
    "HISTORY_PARAM_NAMES",
    "TOO_LONG_TO_FILE_MAX_TOKENS",
    "APIKeyPool",
    "AbortSignal",
    "AbortedError",
    "AgentError",
    "Client",
    "ConfigError",
    "CustomEvent",
    "EventOrigin",
    "EventYield",
    "LLMError",
    "LLMHTTPError",
    "LLMResponseError",
    "LLMRetriesExhausted",
    "MemoryLimitError",
    "OpenAICompatible",
    "OrchestratorError",
    "OutputParseError",
    "PayloadError",
    "ReActEvent",
    "ReActEventType",
    "ResponseYield",
    "Run",
    "RunError",
    "RunNotFound",
    "RunResult",
    "SelfReference",
    "SessionNotOwned",
    "Settings",
    "StoreError",
    "StoreUnavailable",
    "Tool",
    "ToolError",
    "UnknownAgent",
    "async_llm_chat",
    "async_llm_function",
    "connect",
    "llm_chat",
    "llm_function",
    "tool",
]

_LAZY = {name: "orchestrator.client" for name in ("Client", "Run", "RunResult", "connect")}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found once; later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
