"""The memory port (SelfReference's records) and the checkpoint port (a turn's state)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.events import MessageList
from orchestrator.settings import Settings

__all__ = [
    "Checkpointer",
    "DeferringCheckpointer",
    "EndingCheckpointer",
    "Experience",
    "HistoryMemoryStore",
    "MemoryLimits",
    "MemorySnapshot",
    "MemoryStore",
    "TranscriptBase",
]


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
class HistoryMemoryStore(MemoryStore, Protocol):
    """A MemoryStore that can also replace a key's history, or save a turn unless a
    compaction is pending, in one step each, and read just the pending compaction (both
    built-in stores can; SelfReference falls back to the plain `MemoryStore` calls, and
    a `load`, for a store that cannot)."""

    async def replace_history(
        self, key: str, messages: MessageList, summary: dict[str, Any] | None
    ) -> MemorySnapshot:
        """Replace the key's messages (a new revision, as `save_messages`) and its summary
        (None: none) atomically; returns the record as it is after the write."""
        ...

    async def save_turn_unless_pending(
        self, key: str, messages: MessageList, base: TranscriptBase
    ) -> int | None:
        """`save_turn`, unless a compaction is pending for the key: then nothing is
        written and the answer is None (the caller commits the compaction, then saves)."""
        ...

    async def pending_compaction(self, key: str) -> dict[str, Any] | None:
        """The key's pending compaction (`load(key).pending_compaction`, without reading
        the rest of the record)."""
        ...


@runtime_checkable
class Checkpointer(Protocol):
    """Saves a turn's state at step boundaries so another process can resume it.

    `save` is called after every completed step (an LLM call, a tool result, a tool batch);
    it must not return before the events yielded so far are durable, or a resumed turn
    would lose them.
    """

    async def save(self, state: Any) -> None: ...


@runtime_checkable
class DeferringCheckpointer(Checkpointer, Protocol):
    """A Checkpointer that can also queue a state without waiting for it to be durable.

    `save_later(state)` returns at once; the state is written with (never ahead of) the
    events yielded before it, and is durable once a later `save` returns or the turn's
    owner has flushed its outputs (a worker does before it ends or parks the run). The
    loop uses it only where a crash before the write repeats no tool, publishes no event
    twice and saves nothing to memory ahead of it: after ReactStart (the next step is a
    model call, which a crash redoes anyway), after ReactEnd (the turn's last output
    follows in the same write), and in an aborted turn's end while nothing awaits before
    it (an aborted model call's state, an aborted batch's cancelled results and fold, for
    an agent without a SelfReference or abort hooks: `Loop._close_batch`).
    """

    def save_later(self, state: Any) -> None: ...


@runtime_checkable
class EndingCheckpointer(DeferringCheckpointer, Protocol):
    """A DeferringCheckpointer whose owner writes a turn's last outputs with its end.

    `ending()` says the turn has given its final answer: nothing runs before its ReactEnd
    but the end's memory save (no tool, no model call, no checkpoint that waits). The
    outputs from there on (the model call's end event among them) may then wait for the
    end's write instead of going out in one of their own while the save is in flight.
    A crash before the end loses nothing a checkpoint promised: none is taken after a
    final answer, so the next attempt redoes that model call either way. A `save` (which
    waits for everything before it) ends the hold.
    """

    def ending(self) -> None: ...
