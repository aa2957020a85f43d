"""SimpleLLMFunc's synchronous SelfReference API, on the same memory store.

    selfref.bind_history("agent_main", [{"role": "user", "content": "hello"}])
    handle = selfref.memory["agent_main"]        # KeyError until the key is bound
    handle.append({"role": "assistant", "content": "hi"})
    handle.set_system_prompt("Rule A")
    selfref.snapshot_history("agent_main")       # a copy of the messages
    selfref.instance.get()                       # the agent this SelfReference serves

These calls are synchronous, so they need a store that answers without waiting: the
default in-process `InMemoryMemoryStore`. With a store that does I/O (Redis, on a
worker) they raise `AgentError`; use the async API there (`await ctx.inspect()` and
the `selfref_context_*` tools). What they write is what the agents read: a history
bound here is the memory the next call of the agent with that key continues from.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from orchestrator.errors import AgentError, InstanceNotBound
from orchestrator.events import Message, MessageList
from orchestrator.ports import MemoryStore

__all__ = [
    "InstanceHandle",
    "MemoryHandle",
    "MemoryProxy",
    "SelfReferenceInstanceHandle",
    "SelfReferenceMemoryHandle",
    "SelfReferenceMemoryProxy",
    "SyncMemoryAPI",
    "run_now",
]

T = TypeVar("T")

_NEEDS_ASYNC = (
    "this SelfReference's memory store does I/O (e.g. Redis on a worker); the synchronous "
    "memory API needs the in-process store. Use the async API instead"
)


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that finishes without waiting (AgentError if it would
    wait: then the caller must use the async API)."""
    try:
        coro.send(None)
    except StopIteration as finished:
        value: T = finished.value
        return value
    coro.close()
    raise AgentError(_NEEDS_ASYNC)


def _normalize(key: str) -> str:
    if not isinstance(key, str) or not key.strip():
        raise ValueError("memory key must be a non-empty string")
    return key.strip()


def check_history(messages: Any) -> MessageList:
    """A message list as SimpleLLMFunc validates it: dicts with a role, and every tool
    message answering an earlier assistant tool call (ValueError otherwise)."""
    if not isinstance(messages, list):
        raise ValueError("history must be a list of message dicts")
    pending: set[str] = set()
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"message {index} must be a dict with a 'role'")
        if message["role"] == "assistant":
            for call in message.get("tool_calls") or []:
                if isinstance(call, dict) and isinstance(call.get("id"), str):
                    pending.add(call["id"])
        elif message["role"] == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in pending:
                raise ValueError(
                    f"message {index}: tool message {call_id!r} without preceding assistant "
                    "tool_calls"
                )
    return copy.deepcopy(messages)


class MemoryHandle:
    """`selfref.memory[key]`: one key's messages, edited in place."""

    def __init__(self, owner: SyncMemoryAPI, key: str) -> None:
        self._owner = owner
        self._key = key

    def count(self) -> int:
        return len(self._owner.snapshot_history(self._key))

    def all(self) -> MessageList:
        return self._owner.snapshot_history(self._key)

    def get(self, index: int) -> Message:
        return self._owner.snapshot_history(self._key)[index]

    def append(self, message: Message) -> None:
        self._owner.append_message(self._key, message)

    def insert(self, index: int, message: Message) -> None:
        self._owner.insert_message(self._key, index, message)

    def update(self, index: int, message: Message) -> None:
        self._owner.update_message(self._key, index, message)

    def delete(self, index: int) -> None:
        self._owner.delete_message(self._key, index)

    def replace(self, messages: MessageList) -> None:
        self._owner.replace_history(self._key, messages)

    def clear(self) -> None:
        """Drop every message but the system prompt."""
        system = self._owner.get_system_prompt(self._key)
        keep = [] if system is None else [{"role": "system", "content": system}]
        self._owner.replace_history(self._key, keep)

    def get_system_prompt(self) -> str | None:
        return self._owner.get_system_prompt(self._key)

    def set_system_prompt(self, text: str) -> None:
        self._owner.set_system_prompt(self._key, text)

    def append_system_prompt(self, text: str) -> None:
        self._owner.append_system_prompt(self._key, text)


class MemoryProxy:
    """`selfref.memory`: `memory[key]` (a bound key), `keys()`, `key in memory`."""

    def __init__(self, owner: SyncMemoryAPI) -> None:
        self._owner = owner

    def __getitem__(self, key: str) -> MemoryHandle:
        normalized = _normalize(key)
        if not self._owner.has_history(normalized):
            raise KeyError(
                f"Memory key '{normalized}' is not bound. "
                "Bind it before using self_reference.memory[key]."
            )
        return MemoryHandle(self._owner, normalized)

    def keys(self) -> list[str]:
        return self._owner.list_history_keys()

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._owner.has_history(key)


class InstanceHandle:
    """`selfref.instance`: the agent this SelfReference serves (bound by `llm_chat` /
    `llm_function`, or by `bind_agent_instance`), and forks of it run from code.

    `await instance.fork(*args, **kwargs)` calls the agent on a new memory key
    (`<source key>::fork::N`) that starts as a copy of the source key's messages, and
    returns its ForkResult; `fork_spawn` starts one without waiting and
    `fork_gather_all` collects them. Called inside a fork, the source defaults to that
    fork's key (nested forks). In-process: these are asyncio tasks.
    """

    def __init__(self, owner: SyncMemoryAPI) -> None:
        self._owner = owner

    def is_bound(self) -> bool:
        return self._owner.get_agent_instance() is not None

    def get(self) -> Any:
        return self._owner.get_agent_instance()

    async def fork(
        self,
        *agent_args: Any,
        source_memory_key: str | None = None,
        fork_memory_key: str | None = None,
        include_history: bool = False,
        **agent_kwargs: Any,
    ) -> dict[str, Any]:
        handle = await self.fork_spawn(
            *agent_args,
            source_memory_key=source_memory_key,
            fork_memory_key=fork_memory_key,
            **agent_kwargs,
        )
        results = await self.fork_gather_all(handle["fork_id"], include_history=include_history)
        return results[handle["fork_id"]]

    async def fork_spawn(
        self,
        *agent_args: Any,
        source_memory_key: str | None = None,
        fork_memory_key: str | None = None,
        **agent_kwargs: Any,
    ) -> dict[str, Any]:
        return await self._owner.instance_forks().spawn(
            agent_args, agent_kwargs, source_memory_key, fork_memory_key
        )

    async def fork_gather_all(
        self, fork_ids: Any = None, include_history: bool = False
    ) -> dict[str, dict[str, Any]]:
        return await self._owner.instance_forks().gather(fork_ids, include_history)

    def has_pending_fork_tasks(self) -> bool:
        return self._owner.instance_forks().pending()


class SyncMemoryAPI:
    """The synchronous memory methods of `SelfReference` (mixed into it)."""

    store: MemoryStore

    def _init_sync_api(self) -> None:
        """Called by SelfReference.__init__."""
        self._bound_keys: set[str] = set()
        self._agent: Any = None
        self._agent_default_key: str | None = None
        self._instance_forks = InstanceForks(self)

    # -- keys ----------------------------------------------------------------------------

    def bind_history(self, key: str, history: MessageList) -> None:
        """Make `history` the memory of `key` (it replaces what the key held)."""
        key = _normalize(key)
        run_now(self.store.save_messages(key, check_history(list(history))))
        self._bound_keys.add(key)

    def unbind_history(self, key: str) -> None:
        self._bound_keys.discard(_normalize(key))

    def list_history_keys(self) -> list[str]:
        return sorted(self._bound_keys)

    def has_history(self, key: str) -> bool:
        key = _normalize(key)
        if key in self._bound_keys:
            return True
        return run_now(self.store.load(key)).revision > 0

    def resolve_history_key(self, key: str | None = None) -> str:
        """`key`, or the only bound key (ValueError when there is not exactly one)."""
        if key is not None:
            return _normalize(key)
        keys = self.list_history_keys()
        if len(keys) != 1:
            raise ValueError(f"history key is required: {len(keys)} keys are bound")
        return keys[0]

    # -- messages ------------------------------------------------------------------------

    def snapshot_history(self, key: str) -> MessageList:
        """A copy of the key's messages."""
        return copy.deepcopy(run_now(self.store.load(_normalize(key))).messages)

    def replace_history(self, key: str, messages: MessageList) -> None:
        key = _normalize(key)
        run_now(self.store.save_messages(key, check_history(list(messages))))
        self._bound_keys.add(key)

    def append_message(self, key: str, message: Message) -> None:
        self._edit(key, lambda messages: messages.append(dict(message)))

    def insert_message(self, key: str, index: int, message: Message) -> None:
        self._edit(key, lambda messages: messages.insert(index, dict(message)))

    def update_message(self, key: str, index: int, message: Message) -> None:
        def update(messages: MessageList) -> None:
            messages[index] = dict(message)

        self._edit(key, update)

    def delete_message(self, key: str, index: int) -> None:
        self._edit(key, lambda messages: messages.pop(index))

    def get_system_prompt(self, key: str) -> str | None:
        for message in self.snapshot_history(key):
            if message.get("role") == "system":
                content = message.get("content")
                return content if isinstance(content, str) else str(content)
        return None

    def set_system_prompt(self, key: str, text: str) -> None:
        def put(messages: MessageList) -> None:
            rest = [m for m in messages if m.get("role") != "system"]
            messages[:] = [{"role": "system", "content": text}, *rest]

        self._edit(key, put)

    def append_system_prompt(self, key: str, text: str) -> None:
        current = self.get_system_prompt(key)
        self.set_system_prompt(key, text if not current else f"{current}\n{text}")

    def _edit(self, key: str, change: Callable[[MessageList], Any]) -> None:
        messages = self.snapshot_history(key)
        change(messages)
        self.replace_history(key, messages)

    # -- the agent -------------------------------------------------------------------------

    @property
    def memory(self) -> MemoryProxy:
        return MemoryProxy(self)

    @property
    def instance(self) -> InstanceHandle:
        return InstanceHandle(self)

    def bind_agent_instance(
        self, agent: Any, *, default_memory_key: str | None = None, replace: bool = False
    ) -> None:
        """Note the agent this SelfReference serves (the first one, unless `replace`) and
        the memory key its forks start from by default."""
        if self._agent is None or replace:
            self._agent = agent
            self._agent_default_key = default_memory_key

    def get_agent_instance(self) -> Any:
        return self._agent

    def get_agent_default_memory_key(self) -> str | None:
        if self._agent_default_key is not None:
            return self._agent_default_key
        spec = getattr(self._agent, AGENT_ATTRIBUTE, None)
        key = getattr(spec, "memory_key", None)
        return key if isinstance(key, str) else None

    def instance_forks(self) -> InstanceForks:
        return self._instance_forks


# -- forks of the bound agent, from code -----------------------------------------------

# The memory key of the instance fork running in this task (nested forks start from it).
_ACTIVE_FORK: contextvars.ContextVar[tuple[str, str, int] | None] = contextvars.ContextVar(
    "orchestrator_instance_fork", default=None
)
# The agent attribute of llm_chat / llm_function (runtime/agent.py), and the template
# parameter that runs a call on another memory key; named here to keep this module free
# of the loop (agent.py imports SelfReference).
AGENT_ATTRIBUTE = "__orchestrator_agent__"
_KEY_OVERRIDE = "__self_reference_key_override"


@dataclass
class _InstanceFork:
    handle: dict[str, Any]
    task: asyncio.Task[tuple[Any, MessageList]]


class InstanceForks:
    """The forks `selfref.instance` started (asyncio tasks in this process)."""

    def __init__(self, owner: SyncMemoryAPI) -> None:
        self._owner = owner
        self._count = 0
        self._forks: dict[str, _InstanceFork] = {}

    def pending(self) -> bool:
        return any(not f.task.done() for f in self._forks.values())

    async def spawn(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        source_memory_key: str | None,
        fork_memory_key: str | None,
    ) -> dict[str, Any]:
        agent = self._owner.get_agent_instance()
        if agent is None:
            raise InstanceNotBound(
                "No agent instance is bound to this SelfReference: pass it to llm_chat / "
                "llm_function (self_reference=...) or call bind_agent_instance(agent)"
            )
        active = _ACTIVE_FORK.get()
        source = source_memory_key or (active[0] if active else None)
        source = source or self._owner.get_agent_default_memory_key()
        if source is None:
            raise AgentError("instance.fork: no source memory key (pass source_memory_key)")
        self._count += 1
        fork_id = f"fork_{self._count}"
        key = fork_memory_key or f"{source}::fork::{self._count}"
        history = self._owner.snapshot_history(source)
        self._owner.replace_history(key, history)
        depth = (active[2] if active else 0) + 1
        handle = {
            "fork_id": fork_id,
            "parent_fork_id": active[1] if active else None,
            "depth": depth,
            "source_memory_key": source,
            "memory_key": key,
            "status": "running",
        }
        context = contextvars.copy_context()
        context.run(_ACTIVE_FORK.set, (key, fork_id, depth))
        task = asyncio.get_running_loop().create_task(
            _call_agent(agent, args, kwargs, key, history), context=context
        )
        self._forks[fork_id] = _InstanceFork(handle, task)
        return dict(handle)

    async def gather(self, fork_ids: Any, include_history: bool) -> dict[str, dict[str, Any]]:
        wanted = _fork_ids(fork_ids, list(self._forks))
        unknown = [f for f in wanted if f not in self._forks]
        if unknown:
            raise AgentError(f"fork_gather_all: unknown fork id(s) {', '.join(unknown)}")
        forks = [self._forks[f] for f in wanted]
        await asyncio.wait([f.task for f in forks])
        return {f.handle["fork_id"]: self._result(f, include_history) for f in forks}

    def _result(self, fork: _InstanceFork, include_history: bool) -> dict[str, Any]:
        result = {**fork.handle, "error_type": None, "error_message": None}
        history: MessageList = []
        if fork.task.cancelled():
            result.update(status="aborted", response=None, error_type="CancelledError")
        elif (exc := fork.task.exception()) is not None:
            result.update(status="error", response=None, error_type=type(exc).__name__)
            result["error_message"] = str(exc)
        else:
            response, history = fork.task.result()
            if history:
                self._owner.replace_history(fork.handle["memory_key"], history)
            result.update(status="completed", response=response)
        result["result"] = result["response"]
        result["history_count"] = len(history)
        result["history_included"] = include_history
        if include_history:
            result["history"] = copy.deepcopy(history)
        return result


async def _call_agent(
    agent: Any, args: tuple[Any, ...], kwargs: dict[str, Any], key: str, history: MessageList
) -> tuple[Any, MessageList]:
    """Run the agent on the fork's key: (its response, its final history)."""
    kwargs = dict(kwargs)
    kwargs.setdefault("history", history)
    if getattr(agent, AGENT_ATTRIBUTE, None) is not None:
        params = dict(kwargs.pop("_template_params", None) or {})
        kwargs["_template_params"] = {**params, _KEY_OVERRIDE: key}
    outcome = agent(*args, **kwargs)
    if inspect.isawaitable(outcome):
        return _response_and_history(await outcome, history)
    text: list[str] = []
    last: Any = None
    async for item in outcome:
        last = item
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            text.append(item[0])
    if isinstance(last, tuple) and last and last[0] == "" and text:
        return "".join(text), list(last[1])  # llm_chat text mode: chunks, then the marker
    return _response_and_history(last, history)


def _response_and_history(value: Any, history: MessageList) -> tuple[Any, MessageList]:
    messages = getattr(value, "messages", None)
    if messages is not None and hasattr(value, "response"):
        return value.response, list(messages)  # a ResponseYield
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], list):
        return value[0], list(value[1])
    return value, history


def _fork_ids(value: Any, default: list[str]) -> list[str]:
    if value is None:
        return default
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


# SimpleLLMFunc's names for the handles.
SelfReferenceMemoryHandle = MemoryHandle
SelfReferenceMemoryProxy = MemoryProxy
SelfReferenceInstanceHandle = InstanceHandle
