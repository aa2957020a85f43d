"""`APIResponse`: what one prompt got back (or why it got nothing), with usage and cost."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.deluge.conversation import Message


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True)

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def from_openai(cls, usage: Any) -> Usage:
        if not isinstance(usage, dict):
            return cls()
        return cls(
            input_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
        )


class APIResponse(BaseModel):
    """The answer to one prompt. On failure `is_error` is set, `error_message` says why
    and `completion` is None; `model_internal` is the model that answered (or failed
    last). JSON-serialisable (`model_dump_json`), which is how batches store it."""

    model_config = ConfigDict(protected_namespaces=())

    id: int = 0
    model_internal: str | None = None
    message: dict[str, Any] | None = None  # the assistant message, OpenAI shape
    usage: Usage = Field(default_factory=Usage)
    cost: float = 0.0
    is_error: bool = False
    error_message: str | None = None
    status_code: int | None = None
    finish_reason: str | None = None
    attempts: int = 0

    @property
    def content(self) -> Message | None:
        """The assistant message (text and tool calls)."""
        return Message.from_openai(self.message) if self.message is not None else None

    @property
    def completion(self) -> str | None:
        """The text of the answer (None on error, or when the model only called tools)."""
        content = self.content
        return content.completion if content is not None else None

    @property
    def input_tokens(self) -> int:
        return self.usage.input_tokens

    @property
    def output_tokens(self) -> int:
        return self.usage.output_tokens


def total_cost(responses: Iterable[APIResponse | None]) -> float:
    """USD spent by these responses together."""
    return sum(r.cost for r in responses if r is not None)


def total_usage(responses: Iterable[APIResponse | None]) -> Usage:
    got = [r for r in responses if r is not None]
    return Usage(
        input_tokens=sum(r.usage.input_tokens for r in got),
        output_tokens=sum(r.usage.output_tokens for r in got),
    )
