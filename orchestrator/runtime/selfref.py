"""SelfReference: an agent's durable memory, and the tools the model uses to manage it.

    self_reference = SelfReference()              # memory in this process
    @llm_chat(llm_interface=llm, self_reference=self_reference, self_reference_key="agent")

On workers the memory of a key lives in the run's session by default: a new session
starts empty, whatever other sessions did. `SelfReference(memory_scope="tenant")` shares
it across the sessions of one tenant instead (see `SelfReference`).

Per memory key SelfReference keeps what SimpleLLMFunc keeps: the message list, durable
experiences (`exp_N`, deduplicated) and the last compaction summary. The records live in
a `MemoryStore` (a dict here, Redis on workers), so every method is async.

A turn works through a `SelfRefContext` (`SelfReference.bind(key)`):

    ctx.resolve_history(history)         history given: it replaces memory; None: reuse memory
                                         (`begin_turn` also returns the revision it read)
    ctx.system_addendum()                experiences (and a summary the transcript lacks),
                                         to append to the system prompt
    ctx.save_turn(messages, base)        at the end of the turn: concurrent turns of one
                                         key both keep their messages
    ctx.apply_pending_compaction(msgs)   after each tool batch and at the end of the turn
    ctx.tools()                          selfref_context_* and selfref_guide for the model

Compaction follows SimpleLLMFunc: `compact(...)` only queues a structured summary; the
commit replaces the working transcript with the system prompt plus one assistant message
carrying the summary (`<context_compaction_summary>` ... ), and adds the `remember` items
as experiences. Experiences reach the model in an `<experience>` block in the system
prompt, rendered as SimpleLLMFunc renders it. Unlike SimpleLLMFunc, experiences and the
summary are stored as records of their own, not parsed back out of the system prompt.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, cast, get_args, runtime_checkable

import structlog

from orchestrator.errors import AgentError, MemoryLimitError, ToolError
from orchestrator.events import Message, MessageList
from orchestrator.ports import (
    Experience,
    ForkLimits,
    ForkPrimitives,
    HistoryMemoryStore,
    MemorySnapshot,
    MemoryStore,
    ToolSession,
    TranscriptBase,
)
from orchestrator.runtime.forks import FORK_GUIDE, TurnForks, fork_tools
from orchestrator.runtime.memory import InMemoryMemoryStore
from orchestrator.runtime.protocols import conforms
from orchestrator.runtime.selfref_sync import (
    SelfReferenceInstanceHandle,
    SelfReferenceMemoryHandle,
    SelfReferenceMemoryProxy,
    SyncMemoryAPI,
)
from orchestrator.runtime.state import copy_json
from orchestrator.runtime.tools import Tool, ToolRuntime

__all__ = [
    "FORKS_UNAVAILABLE",
    "ContextTools",
    "MemoryScopeName",
    "SelfRefContext",
    "SelfRefRuntime",
    "SelfRefToolProvider",
    "SelfReference",
    "SelfReferenceInstanceHandle",
    "SelfReferenceMemoryHandle",
    "SelfReferenceMemoryProxy",
    "UnavailableForks",
    "apply_system_addendum",
    "make_tool_runtime",
    "parse_compaction_summary",
    "render_compaction_summary",
    "render_experience_block",
    "strip_injected_blocks",
]

_log = structlog.get_logger(__name__)

MemoryScopeName = Literal["session", "tenant"]

FORKS_UNAVAILABLE = (
    "selfref fork.spawn / fork.gather_all need a fork backend: this context was bound "
    "without one. Calling the agent runs its forks in-process (asyncio tasks); "
    "submitting it (orchestrator.connect(...).submit) runs them on workers"
)

_EXPERIENCE_START = "<experience>"
_EXPERIENCE_END = "</experience>"
_SUMMARY_START = "<context_compaction_summary>"
_SUMMARY_END = "</context_compaction_summary>"
_INJECTED_BLOCKS = ((_EXPERIENCE_START, _EXPERIENCE_END), (_SUMMARY_START, _SUMMARY_END))
# Summary sections in SimpleLLMFunc's order, with the titles it renders.
_SUMMARY_SECTIONS = (
    ("goal", "Goal"),
    ("instruction", "Instruction"),
    ("discoveries", "Discoveries"),
    ("completed", "Completed"),
    ("current_status", "Current Status"),
    ("likely_next_work", "Likely next work"),
    ("relevant_files_directories", "Relevant files/directories"),
)
_SUMMARY_TEXT_FIELDS = ("goal", "instruction", "current_status")
_SUMMARY_LIST_FIELDS = (
    "discoveries",
    "completed",
    "likely_next_work",
    "relevant_files_directories",
)
# Provider-specific fields that must not be replayed from memory.
_TRANSIENT_MESSAGE_FIELDS = ("reasoning_details",)

_OVERVIEW = (
    "selfref = your agent context plus your forked child agents. Use it for context "
    "compaction, durable experience cleanup, and parallel sub-agent decomposition."
)
_CONTEXT_PRACTICES = (
    "Call selfref_context_inspect before context surgery: it returns a read-only snapshot "
    "of your messages plus your experiences and the current structured summary.",
    "Use selfref_context_remember for short durable lessons that should survive future "
    "turns; they appear in the <experience> block of your system prompt with their ids.",
    "Use selfref_context_forget with an exact id to remove a wrong or stale experience.",
    "Call selfref_context_compact only after finishing a milestone. Fill every section; keep "
    "the summary concise but sufficient to continue the work without the transcript.",
    "Compaction is queued: it commits after the current tool batch (or at the end of the "
    "turn). The working transcript is then replaced by your system prompt plus one "
    "assistant message carrying the summary.",
)


# -- rendering what the model sees ------------------------------------------------------


def render_experience_block(experiences: Iterable[Experience]) -> str:
    """The `<experience>` block of the system prompt ('' when there are none)."""
    lines = [f"- [{e.id}] {_normalize_text(e.text)}" for e in experiences]
    if not lines:
        return ""
    return "\n".join([_EXPERIENCE_START, *lines, _EXPERIENCE_END])


def render_compaction_summary(summary: Mapping[str, Any]) -> str:
    """The assistant message text carrying a structured compaction summary."""
    normalized = _normalize_summary(summary)
    lines = [_SUMMARY_START]
    for field, title in _SUMMARY_SECTIONS:
        lines.append(f"## {title}")
        value = normalized[field]
        if field in _SUMMARY_LIST_FIELDS:
            lines.extend(f"- {item}" for item in value)
        else:
            lines.append(value)
        lines.append("")
    lines[-1] = _SUMMARY_END
    return "\n".join(lines)


def parse_compaction_summary(content: Any) -> dict[str, Any] | None:
    """The summary carried by a message content, or None if it carries none."""
    if not isinstance(content, str):
        return None
    text = content.strip()
    if not (text.startswith(_SUMMARY_START) and text.endswith(_SUMMARY_END)):
        return None
    body = text[len(_SUMMARY_START) : -len(_SUMMARY_END)]
    titles = {title: field for field, title in _SUMMARY_SECTIONS}
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for raw in body.splitlines():
        line = raw.strip()
        if line.startswith("## "):
            current = titles.get(line[3:].strip())
            if current is not None:
                sections[current] = []
        elif line and current is not None:
            sections[current].append(line)
    parsed: dict[str, Any] = {}
    for field, lines in sections.items():
        if field in _SUMMARY_LIST_FIELDS:
            parsed[field] = [ln[2:].strip() for ln in lines if ln.startswith("- ")]
        else:
            parsed[field] = "\n".join(lines)
    try:
        return _normalize_summary(parsed)
    except ToolError:
        return None


def strip_injected_blocks(text: str) -> str:
    """A system prompt without the `<experience>` and summary blocks SelfReference adds."""
    cleaned = text
    for start_tag, end_tag in _INJECTED_BLOCKS:
        while (start := cleaned.find(start_tag)) >= 0:
            end = cleaned.find(end_tag, start)
            tail = "" if end < 0 else cleaned[end + len(end_tag) :]
            cleaned = cleaned[:start].rstrip() + ("\n\n" + tail.lstrip() if tail.strip() else "")
    return cleaned.strip()


def apply_system_addendum(messages: Sequence[Message], addendum: str) -> MessageList:
    """A copy of `messages` whose last system message ends with `addendum`.

    Idempotent: blocks added earlier are replaced, not repeated. With no system message
    and a non-empty addendum, one is inserted at the front.
    """
    result = copy_json(list(messages))
    for message in reversed(result):
        if message.get("role") == "system" and isinstance(message.get("content"), str):
            message["content"] = _join(strip_injected_blocks(message["content"]), addendum)
            return result
    if addendum:
        result.insert(0, {"role": "system", "content": addendum})
    return result


def _join(base: str, addendum: str) -> str:
    return "\n\n".join(part for part in (base.strip(), addendum.strip()) if part)


def _normalize_text(text: Any, what: str = "experience text") -> str:
    if not isinstance(text, str) or not text.split():
        raise ToolError(f"{what} must be a non-empty string")
    return " ".join(text.split())


def _normalize_summary(payload: Mapping[str, Any]) -> dict[str, Any]:
    normalized: dict[str, Any] = {}
    for field in _SUMMARY_TEXT_FIELDS:
        value = payload.get(field)
        if not isinstance(value, str) or not value.strip():
            raise ToolError(f"compact: {field} must be a non-empty string")
        normalized[field] = value.strip()
    for field in _SUMMARY_LIST_FIELDS:
        items = payload.get(field)
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ToolError(f"compact: {field} must be a list of strings")
        normalized[field] = [i.strip() for i in items if i.strip()]
    return normalized


def _clean_messages(messages: Iterable[Message], *, deep: bool = True) -> MessageList:
    """Deep copies fit for memory: no transient fields, no injected system blocks.

    `deep=False`: copies of the message dicts only (their values are shared), for
    messages handed straight to a store's write (every MemoryStore copies what it is
    given, or serializes it at once).
    """
    cleaned: MessageList = []
    for message in messages:
        copied = copy_json(dict(message)) if deep else dict(message)
        for field in _TRANSIENT_MESSAGE_FIELDS:
            copied.pop(field, None)
        if copied.get("role") == "system" and isinstance(copied.get("content"), str):
            copied["content"] = strip_injected_blocks(copied["content"])
        cleaned.append(copied)
    return cleaned


def _transcript_summary(messages: Iterable[Message]) -> dict[str, Any] | None:
    for message in messages:
        if message.get("role") == "assistant":
            summary = parse_compaction_summary(message.get("content"))
            if summary is not None:
                return summary
    return None


def _normalize_key(key: Any) -> str:
    if not isinstance(key, str) or not key.strip():
        raise ToolError("memory key must be a non-empty string")
    return key.strip()


# -- forks (implemented in orchestrator.runtime.forks; the port in orchestrator.ports) --


class UnavailableForks:
    """Forks of a context bound by hand, without a fork backend: every call raises
    AgentError saying so (an agent call or a worker always provides a backend)."""

    async def spawn(self, message: str, **kwargs: Any) -> dict[str, Any]:
        raise AgentError(FORKS_UNAVAILABLE)

    async def gather_all(
        self, fork_ids: Any = None, include_history: bool = False
    ) -> dict[str, dict[str, Any]]:
        raise AgentError(FORKS_UNAVAILABLE)


# -- tools for the model --------------------------------------------------------------


@runtime_checkable
class SelfRefToolProvider(Protocol):
    """Contributes model-facing tools (and guide lines) to every bound context."""

    def tools(self, context: SelfRefContext) -> list[Tool]: ...

    def guide_lines(self) -> list[str]: ...


class ContextTools:
    """`selfref_context_inspect/remember/forget/compact` and `selfref_guide`."""

    def guide_lines(self) -> list[str]:
        return list(_CONTEXT_PRACTICES)

    def tools(self, context: SelfRefContext) -> list[Tool]:
        return [
            _inspect_tool(context),
            _remember_tool(context),
            _forget_tool(context),
            _compact_tool(context),
            _guide_tool(context),
        ]


def _inspect_tool(context: SelfRefContext) -> Tool:
    async def selfref_context_inspect(key: str | None = None) -> dict[str, Any]:
        """Inspect your self-reference context as a read-only snapshot.

        Returns active_key, experiences (id and text), summary (or null), messages and
        has_pending_compaction. Read summary and experiences first.

        Args:
            key: Memory key to inspect; omit it for your own active context.
        """
        return await context.inspect(key)

    return Tool(func=selfref_context_inspect)


def _remember_tool(context: SelfRefContext) -> Tool:
    async def selfref_context_remember(text: str) -> dict[str, Any]:
        """Persist one durable experience into the <experience> block of your system prompt.

        Returns the experience's id and text; keep the id to forget it later. An identical
        experience is not stored twice.

        Args:
            text: A short durable lesson or rule that should survive future turns.
        """
        return await context.remember(text)

    return Tool(func=selfref_context_remember)


def _forget_tool(context: SelfRefContext) -> Tool:
    async def selfref_context_forget(experience_id: str) -> dict[str, Any]:
        """Forget one durable experience by its id.

        Returns {experience_id, removed}; removed is false when no experience has that id
        (inspect the context to find the exact id).

        Args:
            experience_id: An id such as exp_3, from selfref_context_inspect or remember.
        """
        return await context.forget(experience_id)

    return Tool(func=selfref_context_forget)


def _compact_tool(context: SelfRefContext) -> Tool:
    async def selfref_context_compact(
        goal: str,
        instruction: str,
        discoveries: list[str],
        completed: list[str],
        current_status: str,
        likely_next_work: list[str],
        relevant_files_directories: list[str],
        remember: list[str] | None = None,
    ) -> dict[str, Any]:
        """Queue a milestone compaction of your context.

        After the current tool batch the working transcript is replaced by your system
        prompt plus one assistant message carrying this structured summary.

        Args:
            goal: Summary Goal section.
            instruction: Summary Instruction section.
            discoveries: Summary Discoveries bullets.
            completed: Summary Completed bullets.
            current_status: Summary Current Status section.
            likely_next_work: Summary Likely next work bullets.
            relevant_files_directories: Summary Relevant files/directories bullets.
            remember: Durable experiences to add when the compaction commits.
        """
        return await context.compact(
            goal,
            instruction,
            discoveries,
            completed,
            current_status,
            likely_next_work,
            relevant_files_directories,
            remember=remember,
        )

    return Tool(func=selfref_context_compact)


def _guide_tool(context: SelfRefContext) -> Tool:
    async def selfref_guide() -> str:
        """Read the overview and best practices of your self-reference tools."""
        return context.guide()

    return Tool(func=selfref_guide)


# -- SelfReference and the per-turn context --------------------------------------------


class SelfReference(SyncMemoryAPI):
    """Durable agent memory shared by the agents it is passed to.

    Besides the async, per-turn API (`bind(key)` -> `SelfRefContext`) it has
    SimpleLLMFunc's synchronous one (`bind_history`, `snapshot_history`,
    `memory[key]`, `instance`; `runtime/selfref_sync.py`) for the in-process store.

    `store` defaults to a fresh in-process `InMemoryMemoryStore`: in an in-process call
    this instance's store is the one memory every call shares (SimpleLLMFunc semantics).

    On workers each turn is bound to a Redis store scoped by `memory_scope`:

    - `"session"` (the default): a memory key lives inside the run's session. Every turn
      of a session continues the same memory; a new session starts empty, whatever
      other sessions did.
    - `"tenant"`: a memory key is shared by every session of the run's tenant (runs
      submitted without a tenant share the "no tenant" scope). Never across tenants.

    Either way the keys the model and the events see stay `self_reference_key` and
    `<key>::fork::N`; forks live in their root run's scope. Every record expires
    `memory_retention_s` after its last write and is bounded in size (see Settings).
    """

    def __init__(
        self,
        store: MemoryStore | None = None,
        *,
        tool_providers: Sequence[SelfRefToolProvider] | None = None,
        memory_scope: MemoryScopeName = "session",
        fork_limits: ForkLimits | None = None,
    ) -> None:
        if memory_scope not in get_args(MemoryScopeName):
            raise AgentError(f"memory_scope must be 'session' or 'tenant', not {memory_scope!r}")
        self.memory_scope: MemoryScopeName = memory_scope
        self.store: MemoryStore = store if store is not None else InMemoryMemoryStore()
        self.instance_id: str = uuid.uuid4().hex
        self._init_sync_api()
        # Bounds of forks in in-process calls (workers use Settings).
        self.fork_limits: ForkLimits = fork_limits or ForkLimits()
        self._providers: list[SelfRefToolProvider] = (
            list(tool_providers) if tool_providers is not None else [ContextTools()]
        )

    @property
    def tool_providers(self) -> list[SelfRefToolProvider]:
        return list(self._providers)

    def add_tool_provider(self, provider: SelfRefToolProvider) -> None:
        """Add tools (for example fork tools) to every context bound from now on."""
        self._providers.append(provider)

    def bind(
        self,
        key: str,
        store: MemoryStore | None = None,
        *,
        fork: ForkPrimitives | None = None,
    ) -> SelfRefContext:
        """The handle one turn uses for memory `key` (store: override this instance's)."""
        if not isinstance(key, str) or not key.strip():
            raise AgentError("self_reference_key must be a non-empty string")
        return SelfRefContext(
            key=key.strip(),
            store=store if store is not None else self.store,
            instance_id=self.instance_id,
            providers=self._providers,
            fork=fork if fork is not None else UnavailableForks(),
        )

    def __repr__(self) -> str:
        return (
            f"SelfReference(instance_id={self.instance_id!r}, memory_scope={self.memory_scope!r})"
        )


class SelfRefContext:
    """One turn's view of SelfReference memory, bound to its active key.

    Methods that take `key=None` act on the active key; pass another key to read or
    change another memory record.
    """

    def __init__(
        self,
        *,
        key: str,
        store: MemoryStore,
        instance_id: str,
        providers: Sequence[SelfRefToolProvider],
        fork: ForkPrimitives,
    ) -> None:
        self.active_key = key
        self.store = store
        # `store` as a HistoryMemoryStore (None: it is not one), checked once per store.
        self._checked_store: MemoryStore | None = None
        self._history: HistoryMemoryStore | None = None
        self.instance_id = instance_id
        self.fork = fork
        self._providers = list(providers)

    def _history_store(self) -> HistoryMemoryStore | None:
        """The store, if it has the one-step calls (checked once per store)."""
        if self.store is not self._checked_store:
            self._checked_store = self.store
            store = self.store
            self._history = (
                cast(HistoryMemoryStore, store) if conforms(store, HistoryMemoryStore) else None
            )
        return self._history

    def _key(self, key: str | None) -> str:
        return self.active_key if key is None else _normalize_key(key)

    # -- the primitives (runtime.selfref.context.*) --------------------------------

    async def inspect(self, key: str | None = None) -> dict[str, Any]:
        """`{active_key, experiences, summary, messages, has_pending_compaction}` (copies)."""
        resolved = self._key(key)
        snapshot = await self.store.load(resolved)
        return {
            "active_key": resolved,
            "experiences": [e.model_dump() for e in snapshot.experiences],
            "summary": copy.deepcopy(snapshot.summary),
            "messages": _clean_messages(snapshot.messages),
            "has_pending_compaction": snapshot.pending_compaction is not None,
        }

    async def remember(self, text: str, key: str | None = None) -> dict[str, Any]:
        """Add a durable experience; returns `{id, text}` (the existing one if identical)."""
        experience = await self.store.add_experience(self._key(key), _normalize_text(text))
        return experience.model_dump()

    async def forget(self, experience_id: str, key: str | None = None) -> dict[str, Any]:
        """Remove an experience by id; returns `{experience_id, removed}`."""
        exp_id = _normalize_text(experience_id, "experience_id")
        removed = await self.store.remove_experience(self._key(key), exp_id)
        return {"experience_id": exp_id, "removed": removed}

    async def compact(
        self,
        goal: str,
        instruction: str,
        discoveries: list[str],
        completed: list[str],
        current_status: str,
        likely_next_work: list[str],
        relevant_files_directories: list[str],
        remember: list[str] | None = None,
        key: str | None = None,
    ) -> dict[str, Any]:
        """Queue a compaction; it commits at `apply_pending_compaction`.

        Returns `{status: "queued", active_key, summary, assistant_message, remember}`.
        """
        resolved = self._key(key)
        summary = _normalize_summary(
            {
                "goal": goal,
                "instruction": instruction,
                "discoveries": discoveries,
                "completed": completed,
                "current_status": current_status,
                "likely_next_work": likely_next_work,
                "relevant_files_directories": relevant_files_directories,
            }
        )
        if remember is not None and not isinstance(remember, list):
            raise ToolError("compact: remember must be a list of strings")
        to_remember = [
            _normalize_text(t) for t in remember or [] if isinstance(t, str) and t.strip()
        ]
        rendered = render_compaction_summary(summary)
        pending = {"summary": summary, "remember": to_remember, "rendered_summary": rendered}
        await self.store.set_pending_compaction(resolved, pending)
        return {
            "status": "queued",
            "active_key": resolved,
            "summary": copy.deepcopy(summary),
            "assistant_message": rendered,
            "remember": list(to_remember),
        }

    def guide(self) -> str:
        """Overview and best practices of the selfref tools, for the model."""
        lines = [line for provider in self._providers for line in provider.guide_lines()]
        if isinstance(self.fork, TurnForks):
            lines.extend(FORK_GUIDE)
        else:
            lines.append(
                "Forks (spawning child agents) are not available here; do the work "
                "yourself, step by step."
            )
        practices = "\n".join(f"- {line}" for line in lines)
        return f"{_OVERVIEW}\n\nBest practices:\n{practices}"

    def tools(self) -> list[Tool]:
        """The model-facing tools of every provider (context tools first), then the fork
        tools when this turn can fork."""
        tools = [t for provider in self._providers for t in provider.tools(self)]
        if isinstance(self.fork, TurnForks):
            tools.extend(fork_tools(self.fork))
        return tools

    # -- what the loop calls -----------------------------------------------------------

    async def load_messages(self) -> MessageList:
        """The stored message list of the active key (a copy)."""
        return (await self.store.load(self.active_key)).messages

    async def save_messages(self, messages: Sequence[Message]) -> int:
        """Replace the active key's messages (injected system blocks are stripped);
        returns the new revision."""
        cleaned = _clean_messages(messages, deep=False)
        return await self.store.save_messages(self.active_key, cleaned)

    async def save_turn(self, messages: Sequence[Message], base: TranscriptBase | None) -> int:
        """Store a turn's transcript. With the `base` the turn started from, messages
        other turns saved to the key meanwhile are kept (the turn's own are appended to
        them); without one, the transcript replaces the stored messages."""
        cleaned = _clean_messages(messages, deep=False)
        if base is None:
            return await self.store.save_messages(self.active_key, cleaned)
        return await self.store.save_turn(self.active_key, cleaned, base)

    async def save_turn_unless_compacting(
        self, messages: Sequence[Message], base: TranscriptBase | None
    ) -> bool:
        """`save_turn`, unless a compaction is pending for the active key: then nothing
        is written and the answer is False (commit it first, then save). One store call
        on a `HistoryMemoryStore` with a `base`."""
        history_store = self._history_store()
        if base is not None and history_store is not None:
            cleaned = _clean_messages(messages, deep=False)
            saved = await history_store.save_turn_unless_pending(self.active_key, cleaned, base)
            return saved is not None
        if (await self.store.load(self.active_key)).pending_compaction is not None:
            return False
        await self.save_turn(messages, base)
        return True

    async def replace_history(self, history: Sequence[Message]) -> int:
        """Make `history` the active key's memory; the summary follows the transcript.
        Returns the revision written."""
        return (await self._replace(_clean_messages(history))).revision

    async def _replace(self, cleaned: MessageList) -> MemorySnapshot:
        """`replace_history` of cleaned messages; the record as it is after the write
        (one store call on a `HistoryMemoryStore`)."""
        summary = _transcript_summary(cleaned)
        history_store = self._history_store()
        if history_store is not None:
            return await history_store.replace_history(self.active_key, cleaned, summary)
        await self.store.save_messages(self.active_key, cleaned)
        await self.store.set_summary(self.active_key, summary)
        return await self.store.load(self.active_key)

    async def open_turn(
        self, history: Sequence[Message] | None
    ) -> tuple[MessageList, MemorySnapshot]:
        """`begin_turn`, with the record as the turn found (or made) it instead of just its
        revision: `addendum(snapshot, messages)` then needs no second read."""
        if history is None:
            snapshot = await self.store.load(self.active_key)
            return snapshot.messages, snapshot
        # The snapshot holds these very messages (or a copy): it is only read.
        cleaned = _clean_messages(history)
        return cleaned, await self._replace(cleaned)

    def addendum(self, snapshot: MemorySnapshot, messages: Sequence[Message]) -> str:
        """`system_addendum` for a record already read (`open_turn`'s snapshot)."""
        return self._addendum(snapshot, messages)

    async def resolve_history(self, history: Sequence[Message] | None) -> MessageList:
        """The history a turn starts from.

        A list replaces the stored memory for the key (SimpleLLMFunc semantics); None
        reuses what is stored. Experiences are durable either way.
        """
        messages, _ = await self.begin_turn(history)
        return messages

    async def begin_turn(self, history: Sequence[Message] | None) -> tuple[MessageList, int]:
        """`resolve_history`, plus the memory revision the history stands for (what a
        `TranscriptBase` for the turn's `save_turn` is built from)."""
        messages, snapshot = await self.open_turn(history)
        return messages, snapshot.revision

    async def system_addendum(self, messages: Sequence[Message] | None = None) -> str:
        """Text to append to the system prompt: the `<experience>` block, plus the summary
        when the transcript (`messages`, default: the stored one) does not carry it.

        Empty when nothing is stored. `apply_system_addendum` applies it idempotently.
        """
        snapshot = await self.store.load(self.active_key)
        transcript = snapshot.messages if messages is None else messages
        return self._addendum(snapshot, transcript)

    async def apply_pending_compaction(self, messages: Sequence[Message]) -> MessageList | None:
        """Commit a queued compaction for the active key and return the new transcript.

        The new transcript is the system message(s) of `messages` (the last one carrying
        the refreshed addendum) plus one assistant message with the rendered summary.
        It is stored as the key's messages. Returns None when nothing is queued.
        """
        committed = await self.commit_compaction(messages)
        return None if committed is None else committed[0]

    async def commit_compaction(
        self, messages: Sequence[Message]
    ) -> tuple[MessageList, int] | None:
        """`apply_pending_compaction`, plus the revision the compacted transcript was
        stored at (the turn's new `TranscriptBase`)."""
        key = self.active_key
        history_store = self._history_store()
        if history_store is not None:
            pending = await history_store.pending_compaction(key)  # not the whole record
        else:
            pending = (await self.store.load(key)).pending_compaction
        if pending is None:
            return None
        try:
            summary = _normalize_summary(pending.get("summary") or {})
        except ToolError as exc:
            _log.warning("selfref.compaction_dropped", key=key, reason=str(exc))
            await self.store.set_pending_compaction(key, None)
            return None
        for text in pending.get("remember") or []:
            if isinstance(text, str) and text.strip():
                await self._remember_quietly(key, _normalize_text(text))
        await self.store.set_summary(key, summary)
        systems = [m for m in _clean_messages(messages) if m.get("role") == "system"]
        compacted = [*systems, {"role": "assistant", "content": render_compaction_summary(summary)}]
        revision = await self.store.save_messages(key, compacted)
        # Cleared last: a commit cut short is safely redone (experiences deduplicate).
        await self.store.set_pending_compaction(key, None)
        refreshed = await self.store.load(key)
        return apply_system_addendum(compacted, self._addendum(refreshed, compacted)), revision

    async def _remember_quietly(self, key: str, text: str) -> None:
        """A compaction's `remember` item: one the memory has no room for is dropped with a
        warning (the compaction itself must still commit)."""
        try:
            await self.store.add_experience(key, text)
        except MemoryLimitError as exc:
            _log.warning("selfref.experience_dropped", key=key, reason=str(exc))

    def _addendum(self, snapshot: MemorySnapshot, transcript: Sequence[Message]) -> str:
        parts = [render_experience_block(snapshot.experiences)]
        if snapshot.summary is not None and _transcript_summary(transcript) is None:
            try:
                parts.append(render_compaction_summary(snapshot.summary))
            except ToolError:
                _log.warning("selfref.summary_unreadable", key=snapshot.key)
        return "\n\n".join(part for part in parts if part)

    def __repr__(self) -> str:
        return f"SelfRefContext(active_key={self.active_key!r})"


# -- what a tool receives as `runtime` -------------------------------------------------


class SelfRefRuntime:
    """`runtime.selfref`: `.context` (memory primitives), `.fork`, `.guide()`."""

    def __init__(self, context: SelfRefContext) -> None:
        self.context = context

    @property
    def fork(self) -> ForkPrimitives:
        return self.context.fork

    @property
    def instance_id(self) -> str:
        return self.context.instance_id

    def guide(self) -> str:
        return self.context.guide()


def make_tool_runtime(
    ctx: SelfRefContext | None, session: ToolSession | None = None
) -> ToolRuntime:
    """The `runtime` object for tools of a turn (ctx None: the agent has no SelfReference;
    session None: an in-process call)."""
    return ToolRuntime(SelfRefRuntime(ctx) if ctx is not None else None, session=session)
