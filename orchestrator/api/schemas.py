"""The API's request and response bodies (they make up its OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.events import MessageList
from orchestrator.runs import AGENT_ADDRESS_PATTERN, ID_PATTERN, RunRecord, RunStatus

__all__ = [
    "AbortRequest",
    "AbortResponse",
    "ErrorBody",
    "RunDetail",
    "RunPage",
    "RunSummary",
    "SubmitRequest",
    "SubmitResponse",
]


class SubmitRequest(BaseModel):
    """One agent turn to queue."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(
        pattern=AGENT_ADDRESS_PATTERN,
        max_length=300,
        description="Where workers find the agent: 'package.module:function'.",
        examples=["orchestrator.demo_agents:weather_chat"],
    )
    message: str | None = Field(default=None, description="The user's message for this turn.")
    history: MessageList | None = Field(
        default=None, description="Earlier messages (OpenAI chat format)."
    )
    session_id: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="Continue this session (default: a new session named after the run).",
    )
    args: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for the agent."
    )
    template_params: dict[str, Any] = Field(
        default_factory=dict, description="Values for the agent's prompt template."
    )
    max_attempts: int | None = Field(
        default=None, ge=1, le=20, description="Attempts before a crashing turn fails."
    )


class SubmitResponse(BaseModel):
    run_id: str
    session_id: str
    status: RunStatus
    links: dict[str, str]


class AbortRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="user_abort", max_length=500)


class AbortResponse(BaseModel):
    run_id: str
    session_id: str
    status: RunStatus
    abort_requested: bool


class SessionAbortResponse(BaseModel):
    session_id: str
    # The session's runs that were still live (each stops with its forks).
    runs: list[str]
    abort_requested: bool


class RunSummary(BaseModel):
    """A run as listed: no messages, no result text."""

    run_id: str
    session_id: str
    agent: str
    status: RunStatus
    attempt: int
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    queue_ms: float | None
    run_ms: float | None
    total_tokens: int | None
    error: str | None
    abort_reason: str | None

    @classmethod
    def of(cls, record: RunRecord) -> RunSummary:
        tokens = (record.usage or {}).get("total_tokens")
        return cls(
            run_id=record.run_id,
            session_id=record.session_id,
            agent=record.agent,
            status=record.status,
            attempt=record.attempt,
            submitted_at=record.submitted_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            queue_ms=record.queue_ms,
            run_ms=record.run_ms,
            total_tokens=tokens if isinstance(tokens, int) else None,
            error=record.error,
            abort_reason=record.abort_reason,
        )


class RunDetail(BaseModel):
    """Everything known about one run."""

    run_id: str
    session_id: str
    agent: str
    status: RunStatus
    attempt: int
    max_attempts: int
    worker_id: str | None
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    timings: dict[str, float | None]
    response: str | None
    messages: MessageList | None
    usage: dict[str, Any] | None
    error: str | None
    error_type: str | None
    abort_reason: str | None

    @classmethod
    def of(cls, record: RunRecord) -> RunDetail:
        return cls(
            **record.model_dump(exclude={"v", "tenant"}),
            timings=record.timings,
        )


class RunPage(BaseModel):
    runs: list[RunSummary]
    limit: int
    offset: int
    next_offset: int | None = Field(
        description="Pass as `offset` for the next page; null at the end."
    )


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer has this shape."""

    error: str = Field(description="A stable code, e.g. 'validation_error', 'not_found'.")
    message: str
    details: list[dict[str, Any]] | None = None
