"""The small interfaces the runtime talks to. Nothing here imports redis, arq or httpx.

    LLMInterface    a chat-completions model (OpenAICompatible over httpx implements it)
    MemoryStore     SelfReference memory per key (in-process dict, or Redis), with the
                    values it trades in: MemorySnapshot, TranscriptBase, MemoryLimits
    Checkpointer    where a turn's state is saved between steps (nothing, or Redis)
    SessionJournal  bounded records a tool keeps per session across turns and workers
                    (JournalHead, JournalRecord, JournalLimits); ToolSession carries it

Events are not a port of their own: a turn is an async generator of outputs, and
whoever drives it (llm_chat in-process, a worker) decides where they go.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.events import MessageList
from orchestrator.settings import Settings


@runtime_checkable
class LLMInterface(Protocol):
    """An OpenAI-compatible chat model.

    Both methods speak the OpenAI wire format as plain JSON dicts: `chat` returns one
    chat.completion object, `chat_stream` yields chat.completion.chunk objects (the last
    one may carry only `usage`). `tools` is a list of OpenAI function-tool definitions.
    """

    model_name: str

    async def chat(
        self, messages: MessageList, *, tools: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> dict[str, Any]: ...

    def chat_stream(
        self, messages: MessageList, *, tools: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]: ...


class Experience(BaseModel):
    id: str
    text: str


class MemorySnapshot(BaseModel):
    """Everything SelfReference keeps for one memory key.

    `revision` counts the writes of `messages` (0: never written); a turn notes the
    revision it started from, so that its save can tell whether someone else wrote since.
    """

    key: str
    messages: MessageList = Field(default_factory=list)
    experiences: list[Experience] = Field(default_factory=list)
    summary: dict[str, Any] | None = None
    pending_compaction: dict[str, Any] | None = None
    revision: int = 0


class TranscriptBase(BaseModel):
    """Where a turn's transcript stands against its memory key, for `save_turn`.

    The first `count` messages of the transcript are what the key held at `revision`
    (or what the turn itself wrote then); the rest are the turn's own. `writer` (the
    agent call) makes a retried save add nothing twice.
    """

    model_config = ConfigDict(frozen=True)

    revision: int = Field(ge=0)
    count: int = Field(ge=0)
    writer: str


@dataclass(frozen=True)
class MemoryLimits:
    """How long a memory record lives and how large it may grow.

    retention_s           a record expires this long after its last write (None: never)
    max_message_bytes     the stored transcript (as JSON): over it, the oldest non-system
                          messages are dropped, with a warning; a summary or pending
                          compaction over it is refused (`MemoryLimitError`)
    max_experiences       adding one more is refused (`MemoryLimitError`: the model reads
                          it and can forget an experience first)
    max_experience_chars  a longer experience text is refused (`MemoryLimitError`)
    """

    retention_s: float | None = 7 * 86_400
    max_message_bytes: int = 1 << 20
    max_experiences: int = 200
    max_experience_chars: int = 2_000

    @classmethod
    def from_settings(cls, settings: Settings) -> MemoryLimits:
        return cls(
            retention_s=settings.memory_retention_s,
            max_message_bytes=settings.memory_max_message_bytes,
            max_experiences=settings.memory_max_experiences,
        )


@runtime_checkable
class MemoryStore(Protocol):
    """SelfReference memory, one record per key. Writes to one key never touch another.

    Every write refreshes the record's retention; records are bounded by the store's
    `MemoryLimits`.
    """

    async def load(self, key: str) -> MemorySnapshot:
        """The key's record; an empty one if the key was never written."""
        ...

    async def save_messages(self, key: str, messages: MessageList) -> int:
        """Replace the key's messages; returns the new revision."""
        ...

    async def save_turn(self, key: str, messages: MessageList, base: TranscriptBase) -> int:
        """Save a turn's transcript without losing what others saved meanwhile.

        If the key is still at `base.revision`, `messages` replace the stored ones (as
        `save_messages` would). Otherwise only the turn's own messages
        (`messages[base.count:]`, less any this writer already added from the same base)
        are appended to what is stored now, atomically. Returns the new revision.
        """
        ...

    async def add_experience(self, key: str, text: str) -> Experience:
        """Append a durable experience (ids `exp_N`); an identical text is not added twice."""
        ...

    async def remove_experience(self, key: str, experience_id: str) -> bool: ...

    async def set_summary(self, key: str, summary: dict[str, Any] | None) -> None: ...

    async def set_pending_compaction(self, key: str, compaction: dict[str, Any] | None) -> None: ...


@runtime_checkable
class Checkpointer(Protocol):
    """Saves a turn's state at step boundaries so another process can resume it.

    `save` is called after every completed step (an LLM call, a tool result, a tool batch);
    it must not return before the events yielded so far are durable, or a resumed turn
    would lose them.
    """

    async def save(self, state: Any) -> None: ...


# -- session journals (what a tool keeps for a session, across turns and workers) ----------


class JournalHead(BaseModel):
    """Where a session journal stands.

    `generation` names this life of the journal (None: never written, or expired); it
    changes at every reset. `seq` counts the entries appended since then, `stored` those
    kept: an entry the bounds refused is counted but not kept, so the journal no longer
    holds its whole history (`complete` is False).
    """

    model_config = ConfigDict(frozen=True)

    generation: str | None = None
    seq: int = Field(default=0, ge=0)
    stored: int = Field(default=0, ge=0)

    @property
    def complete(self) -> bool:
        return self.stored == self.seq


class JournalRecord(JournalHead):
    """A journal's head and its kept entries, oldest first."""

    entries: list[dict[str, Any]] = Field(default_factory=list)


@dataclass(frozen=True)
class JournalLimits:
    """How long a journal lives and how large it may grow.

    retention_s    the journal expires this long after its last write (None: never)
    max_entries    entries kept; later ones are refused (the journal becomes incomplete)
    max_bytes      total size of the kept entries (as JSON)
    """

    retention_s: float | None = 86_400
    max_entries: int = 500
    max_bytes: int = 1 << 20

    @classmethod
    def from_settings(cls, settings: Settings) -> JournalLimits:
        return cls(
            retention_s=settings.journal_retention_s,
            max_entries=settings.journal_max_entries,
            max_bytes=settings.journal_max_bytes,
        )


@runtime_checkable
class SessionJournal(Protocol):
    """Append-only records a tool keeps for one session, by name, readable from any worker
    (PyRepl keeps the inputs it executed, to rebuild an interpreter elsewhere).

    Bounded by `JournalLimits`; every write refreshes the retention.
    """

    async def head(self, name: str) -> JournalHead:
        """Where the journal stands (an empty head if it was never written or expired)."""
        ...

    async def read(self, name: str) -> JournalRecord:
        """The head and the kept entries."""
        ...

    async def append(self, name: str, entry: dict[str, Any]) -> JournalHead:
        """Append one JSON object; returns the head after it. An entry over the bounds is
        counted but not kept (the head is then incomplete)."""
        ...

    async def reset(self, name: str, *, complete: bool = True) -> JournalHead:
        """Start the journal afresh: a new generation without entries. `complete=False`
        starts it as missing one entry (its history is known to be lost)."""
        ...


@dataclass(frozen=True)
class ToolSession:
    """The distributed session a tool call runs in, as a worker tells tools about it
    (`runtime.session`; None in an in-process call)."""

    session_id: str
    run_id: str
    fork_id: str | None
    journal: SessionJournal
