"""The API's request and response bodies (they make up its OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from orchestrator.events import MessageList
from orchestrator.runs import AGENT_ADDRESS_PATTERN, ID_PATTERN, RunRecord, RunStatus

__all__ = [
    "AbortRequest",
    "AbortResponse",
    "ErrorBody",
    "RequestBody",
    "RunDetail",
    "RunPage",
    "RunSummary",
    "SubmitRequest",
    "SubmitResponse",
]


def unencodable_text(body: Any) -> str | None:
    """Where in a decoded JSON body (strings, keys, lists, objects) the first text that
    cannot be encoded as UTF-8 is, e.g. `history[0].content`; None if there is none.

    JSON may spell a lone UTF-16 surrogate (`"\\ud800"`); Python decodes it into a str
    that no UTF-8 writer (Redis, a JSON response, a log) can encode. The walk is iterative,
    so no nesting depth makes it fail.
    """
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not _encodable(value):
                return path or "the body"
        elif isinstance(value, dict):
            children: list[tuple[str, Any]] = []
            for key, item in value.items():
                if not _encodable(str(key)):
                    return f"a key in {path or 'the body'}"
                children.append((f"{path}.{key}" if path else str(key), item))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend(reversed([(f"{path}[{i}]", item) for i, item in enumerate(value)]))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class RequestBody(BaseModel):
    """A request body. Text anywhere in it (values, keys, nested in `args`) must be
    valid Unicode: a lone surrogate is a 422 naming where it is, checked once, here."""

    @model_validator(mode="before")
    @classmethod
    def _text_is_unicode(cls, data: Any) -> Any:
        where = unencodable_text(data)
        if where is not None:
            raise PydanticCustomError(
                "unencodable_text",
                "{where} is not valid Unicode (it holds a lone UTF-16 surrogate such as "
                "\\ud800); send well-formed UTF-8 text",
                {"where": where},
            )
        return data


class SubmitRequest(RequestBody):
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


class AbortRequest(RequestBody):
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
