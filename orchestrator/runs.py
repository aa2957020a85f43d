"""Distributed runs as values: the job payload, the run record, and what a stream reader gets.

    RunRequest    the JSON payload of one arq job (strict: a malformed payload is refused)
    RunRecord     everything known about one run (status, timings, result or error)
    RunStatus     queued -> running (<-> waiting) -> completed | error | aborted
    ForkInfo      where a fork run sits in its tree (parent, depth, memory keys, ...)
    StatusEntry   the status marker a worker writes into the session stream
    StreamEntry   one decoded entry of a session stream (event, response or status)

No redis here: the adapters in `orchestrator.store` persist these.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.errors import PayloadError
from orchestrator.events import EventYield, MessageList, ResponseYield

__all__ = [
    "ForkInfo",
    "RunRecord",
    "RunRequest",
    "RunResultView",
    "RunStatus",
    "RunStatusView",
    "StatusEntry",
    "StreamEntry",
    "TreeProgress",
    "fork_run_id",
]

# "package.module:function" (or "module:Class.method"): where a worker finds the agent.
AGENT_ADDRESS_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$"
# Ids end up inside Redis key names and hash tags.
ID_PATTERN = r"^[^{}\s]{1,200}$"


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    # Suspended in `gather_all` until its forks end; holds no worker slot meanwhile.
    WAITING = "waiting"
    COMPLETED = "completed"
    ERROR = "error"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        """True once the run has ended (completed, error or aborted)."""
        return self in _TERMINAL


_TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.ERROR, RunStatus.ABORTED})


def fork_run_id(root_run_id: str, fork_id: str) -> str:
    """The run id of fork `fork_id` in the tree of `root_run_id`."""
    return f"{root_run_id}.{fork_id}"


class ForkInfo(BaseModel):
    """Where a fork run sits in its tree: the fields its events' `EventOrigin` carries,
    plus what its worker needs to find its parent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fork_id: str = Field(pattern=r"^fork_[0-9]+$")
    root_run_id: str = Field(pattern=ID_PATTERN)
    parent_run_id: str = Field(pattern=ID_PATTERN)
    parent_fork_id: str | None = None
    depth: int = Field(ge=1)
    # This fork's place among its parent's forks (1, 2, ...).
    fork_seq: int = Field(ge=1)
    source_memory_key: str | None = None
    memory_key: str | None = None
    # The parent's tool call that spawned this fork.
    tool_name: str | None = None
    tool_call_id: str | None = None


class RunRequest(BaseModel):
    """One agent turn to run on a worker: the arq job payload, as JSON.

    Strict on purpose: unknown fields, a wrong version or a malformed agent address are
    refused with a `PayloadError` by `from_json` rather than guessed at.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    run_id: str = Field(pattern=ID_PATTERN)
    session_id: str = Field(pattern=ID_PATTERN)
    agent: str = Field(pattern=AGENT_ADDRESS_PATTERN)
    message: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    history: MessageList | None = None
    attempt: int = Field(default=1, ge=1)
    # Bumped each time a run suspended in gather_all is resumed (a fresh job per segment).
    segment: int = Field(default=0, ge=0)
    submitted_at: float = Field(default_factory=time.time)
    options: dict[str, Any] = Field(default_factory=dict)
    fork: ForkInfo | None = None

    @property
    def root_run_id(self) -> str:
        return self.fork.root_run_id if self.fork is not None else self.run_id

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> RunRequest:
        """Decode a job payload; raises `PayloadError` naming what is wrong."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise PayloadError(f"invalid run request: {_summarise(exc)}") from exc

    @classmethod
    def from_dict(cls, data: Any) -> RunRequest:
        """Like `from_json`, for a payload that was already parsed."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PayloadError(f"invalid run request: {_summarise(exc)}") from exc


class RunRecord(BaseModel):
    """Everything known about one run. Times are Unix epoch seconds."""

    # Records are read back from Redis: unknown fields (a newer writer) are ignored.
    model_config = ConfigDict(extra="ignore")

    v: int = 1
    run_id: str
    session_id: str
    agent: str
    status: RunStatus = RunStatus.QUEUED
    attempt: int = 1
    max_attempts: int = 1
    segment: int = 0
    submitted_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    response: str | None = None
    messages: MessageList | None = None
    usage: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    abort_reason: str | None = None
    tenant: str | None = None
    # The job payload (RunRequest as JSON), kept so a reaper can re-enqueue the run.
    request: dict[str, Any] | None = None
    # Forks: where this run sits in its tree (None for a root run) ...
    fork: ForkInfo | None = None
    # ... and, while WAITING, the fork run ids whose end resumes it.
    waiting_for: list[str] = Field(default_factory=list)

    @property
    def root_run_id(self) -> str:
        return self.fork.root_run_id if self.fork is not None else self.run_id

    @classmethod
    def of_json(cls, run_id: str, raw: bytes | str) -> RunRecord:
        """Decode a stored record; `PayloadError` if it is corrupt."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise PayloadError(f"run record {run_id!r} is corrupt") from exc

    def updated(self, fields: Mapping[str, Any]) -> RunRecord:
        """A copy with `fields` changed, each validated as this field (ValidationError on
        a bad value or an unknown field); this record is left as it was. Values it does
        not change are shared with this record (records are never changed in place)."""
        copy = self.model_copy()
        for name, value in fields.items():
            if name not in RunRecord.model_fields:
                raise ValueError(f"unknown RunRecord field {name!r}")
            _RECORD_VALIDATOR.validate_assignment(copy, name, value)
        return copy

    @property
    def queue_ms(self) -> float | None:
        """Milliseconds from submission to start (None until started)."""
        if self.started_at is None:
            return None
        return max(0.0, (self.started_at - self.submitted_at) * 1000.0)

    @property
    def run_ms(self) -> float | None:
        """Milliseconds from start to finish (None until both are known)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, (self.finished_at - self.started_at) * 1000.0)

    @property
    def timings(self) -> dict[str, float | None]:
        """`queue_ms` and `run_ms` together, for dashboards and benchmarks."""
        return {"queue_ms": self.queue_ms, "run_ms": self.run_ms}


class RunStatusView(BaseModel):
    """Just the status of a stored `RunRecord`: for checks over many records (are a
    parent's forks done?), several times cheaper to decode than the whole record."""

    model_config = ConfigDict(extra="ignore")

    status: RunStatus = RunStatus.QUEUED

    @classmethod
    def of_json(cls, run_id: str, raw: bytes | str) -> RunStatusView:
        """Decode a stored record's status; `PayloadError` if it is not a JSON object
        with a valid status."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise PayloadError(f"run record {run_id!r} is corrupt") from exc


class RunResultView(BaseModel):
    """What an ended run's result reads of a stored `RunRecord` (a fork's `ForkResult`
    in a gather): its status, response, error fields, fork info and messages, without
    the request it carries (the job payload, with its starting context as history).

    Field for field as `RunRecord` validates them; fields it does not read are skipped,
    and a record corrupt only in one of those reads as its result."""

    model_config = ConfigDict(extra="ignore")

    run_id: str
    status: RunStatus = RunStatus.QUEUED
    response: str | None = None
    messages: MessageList | None = None
    error: str | None = None
    error_type: str | None = None
    abort_reason: str | None = None
    fork: ForkInfo | None = None

    @classmethod
    def of_json(cls, run_id: str, raw: bytes | str) -> RunResultView:
        """Decode a stored record's result fields; `PayloadError` if it is not a JSON
        object whose result fields are valid."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise PayloadError(f"run record {run_id!r} is corrupt") from exc


_RECORD_VALIDATOR = RunRecord.__pydantic_validator__


class StatusEntry(BaseModel):
    """A run's status change, written into the session stream (kind "status")."""

    model_config = ConfigDict(extra="ignore")

    run_id: str
    status: RunStatus
    error: str | None = None
    error_type: str | None = None
    abort_reason: str | None = None
    at: float = Field(default_factory=time.time)
    # Where a fork sits in its tree (on the entries that announce a fork and its waits).
    fork: ForkInfo | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


StreamKind = Literal["event", "response", "status"]


class StreamEntry(BaseModel):
    """One decoded entry of a session stream.

    `id` is the stream entry id (resume after it). Exactly one of `output` (kinds "event"
    and "response") and `status` (kind "status") is set.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    run_id: str
    kind: StreamKind
    # The root run of the fork tree the entry belongs to (run_id itself for a root run).
    root_run_id: str = ""
    output: ResponseYield | EventYield | None = None
    status: StatusEntry | None = None


class TreeProgress:
    """Follows one run's fork tree through its stream entries.

    A fork announces itself (a "queued" status entry) before its parent's next event, and
    every run ends with a terminal status entry, so a reader that has seen the root end
    and every fork it heard of end has seen every event of the tree. `done` says so.
    """

    def __init__(self, root_run_id: str) -> None:
        self.root_run_id = root_run_id
        self.forks: dict[str, RunStatus | None] = {}
        self.root_status: RunStatus | None = None

    def add(self, entry: StreamEntry) -> None:
        if entry.root_run_id != self.root_run_id and entry.run_id != self.root_run_id:
            return
        status = entry.status.status if entry.status is not None else None
        if entry.run_id == self.root_run_id:
            if status is not None:
                self.root_status = status
            return
        if status is not None or entry.run_id not in self.forks:
            self.forks[entry.run_id] = status or self.forks.get(entry.run_id)

    @property
    def root_ended(self) -> bool:
        return self.root_status is not None and self.root_status.terminal

    @property
    def forks_ended(self) -> int:
        return sum(1 for s in self.forks.values() if s is not None and s.terminal)

    @property
    def done(self) -> bool:
        """The root and every fork seen so far have ended."""
        return self.root_ended and self.forks_ended == len(self.forks)


def _summarise(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)
