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

import copy
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from orchestrator.errors import AgentError
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
    `llm_function`, or by `bind_agent_instance`)."""

    def __init__(self, owner: SyncMemoryAPI) -> None:
        self._owner = owner

    def is_bound(self) -> bool:
        return self._owner.get_agent_instance() is not None

    def get(self) -> Any:
        return self._owner.get_agent_instance()


class SyncMemoryAPI:
    """The synchronous memory methods of `SelfReference` (mixed into it)."""

    store: MemoryStore

    def _sync_state(self) -> tuple[set[str], list[Any]]:
        state = self.__dict__.setdefault("_sync_bound", (set(), [None]))
        bound: set[str] = state[0]
        agent: list[Any] = state[1]
        return bound, agent

    # -- keys ----------------------------------------------------------------------------

    def bind_history(self, key: str, history: MessageList) -> None:
        """Make `history` the memory of `key` (it replaces what the key held)."""
        key = _normalize(key)
        run_now(self.store.save_messages(key, check_history(list(history))))
        self._sync_state()[0].add(key)

    def unbind_history(self, key: str) -> None:
        self._sync_state()[0].discard(_normalize(key))

    def list_history_keys(self) -> list[str]:
        return sorted(self._sync_state()[0])

    def has_history(self, key: str) -> bool:
        key = _normalize(key)
        if key in self._sync_state()[0]:
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
        self._sync_state()[0].add(key)

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

    def bind_agent_instance(self, agent: Any, *, replace: bool = False) -> None:
        """Note the agent this SelfReference serves (the first one, unless `replace`)."""
        slot = self._sync_state()[1]
        if slot[0] is None or replace:
            slot[0] = agent

    def get_agent_instance(self) -> Any:
        return self._sync_state()[1][0]


# SimpleLLMFunc's names for the handles.
SelfReferenceMemoryHandle = MemoryHandle
SelfReferenceMemoryProxy = MemoryProxy
SelfReferenceInstanceHandle = InstanceHandle
