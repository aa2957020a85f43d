"""The session journal port: bounded records a tool keeps for a session, readable from
any worker (PyRepl keeps the inputs it ran there), and `ToolSession`, how a worker tells
tools which session they run in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.settings import Settings

__all__ = ["JournalHead", "JournalLimits", "JournalRecord", "SessionJournal", "ToolSession"]


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
