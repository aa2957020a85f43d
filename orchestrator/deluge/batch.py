"""Batches on the cluster: what `Client.submit_batch` stores and each worker job reads.

`BatchSpec` (JSON, versioned) carries everything a worker needs to answer an item: the
models' registry entries (so a worker needs no registration of its own; keys stay in the
workers' environment, only the variable's name travels), sampling options, the shared
rate limit and the retry budgets. `run_item` answers one item the way `LLMClient.start`
(or `run_agent_loop`) does in-process. `BatchProgress` is what anyone reads back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.deluge.client import LLMClient
from orchestrator.deluge.conversation import Conversation, Prompt, as_conversation
from orchestrator.deluge.limits import RequestLimiter
from orchestrator.deluge.models import ModelRegistry, ModelSpec
from orchestrator.deluge.response import APIResponse
from orchestrator.deluge.tool import Tool
from orchestrator.errors import ConfigError, PayloadError

BATCH_SPEC_VERSION = 1
# Answers another run of the item would get again: not retried.
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 413, 422})


class BatchSpec(BaseModel):
    """How to answer every item of one batch."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    type: Literal["deluge_batch"] = "deluge_batch"
    version: int = BATCH_SPEC_VERSION
    models: list[ModelSpec] = Field(min_length=1)
    model_weights: list[float] | None = None
    max_new_tokens: int = Field(default=512, ge=1)
    temperature: float = 0.75
    top_p: float = 1.0
    max_requests_per_minute: int = Field(default=1_000, ge=1)
    max_tokens_per_minute: int = Field(default=100_000, ge=1)
    # The limits' window. 60 s is "per minute"; tests shrink it (N per period_s).
    limit_period_s: float = Field(default=60.0, gt=0)
    # Added to the window: covers the variation of the HTTP hop between admission and
    # arrival at the provider (store/rate_limits.py).
    limit_margin_s: float = Field(default=0.25, ge=0)
    limiter_name: str = Field(min_length=1)
    max_attempts: int = Field(default=5, ge=1)  # HTTP attempts per run of an item
    item_attempts: int = Field(default=2, ge=1)  # runs of an item whose answer is an error
    retry_delay: float = Field(default=0.5, ge=0)
    request_timeout: float = Field(default=30.0, gt=0)
    stream: bool = False
    # Agent loops: tools as "module:name" of `Tool`s in the workers' agent modules.
    tools: list[str] = Field(default_factory=list)
    max_rounds: int = Field(default=5, ge=1)


class BatchProgress(BaseModel):
    """Where a batch stands: items answered (`done`), failed after every retry
    (`failed`), still to go (`pending`), and the usage and cost so far."""

    batch_id: str
    total: int = 0
    done: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    created_at: float = 0.0
    # The tenant whose submit made the batch (None: the operator's). Only that tenant
    # and the operator see it.
    tenant: str | None = None

    @field_validator("tenant", mode="before")
    @classmethod
    def _no_tenant(cls, value: object) -> object:
        return None if value == "" else value

    def visible_to(self, tenant: str | None) -> bool:
        """The operator (None) sees every batch; a tenant only its own."""
        return tenant is None or self.tenant == tenant

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - self.failed)

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.pending == 0

    @classmethod
    def from_counters(cls, batch_id: str, counters: dict[str, str]) -> BatchProgress:
        try:
            return cls(batch_id=batch_id, **counters)
        except ValidationError as exc:
            raise PayloadError(f"batch {batch_id}: unreadable counters: {exc}") from exc


def encode_item(prompt: Prompt) -> str:
    """One item as stored: its OpenAI message list (JSON)."""
    return json.dumps(as_conversation(prompt).to_openai(), ensure_ascii=False)


def decode_item(raw: str) -> Conversation:
    try:
        messages = json.loads(raw)
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError("not a list of messages")
        return Conversation.from_openai(messages)
    except (ValueError, ConfigError) as exc:
        raise PayloadError(f"batch item is not a message list: {exc}") from exc


def decode_spec(raw: str) -> BatchSpec:
    try:
        return BatchSpec.model_validate_json(raw)
    except ValidationError as exc:
        raise PayloadError(f"batch spec is not valid: {exc}") from exc


def client_for(spec: BatchSpec, limiter: RequestLimiter, environ: dict[str, str]) -> LLMClient:
    """The `LLMClient` a worker answers a batch's items with (connections kept)."""
    registry = ModelRegistry({m.name: m for m in spec.models})
    return LLMClient(
        [m.name for m in spec.models],
        model_weights=spec.model_weights,
        max_new_tokens=spec.max_new_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        max_attempts=spec.max_attempts,
        retry_delay=spec.retry_delay,
        request_timeout=spec.request_timeout,
        stream=spec.stream,
        progress="none",
        limiter=limiter,
        registry=registry,
        environ=environ,
        keep_connections=True,
    )


async def run_item(
    client: LLMClient, spec: BatchSpec, item: Conversation, tools: Sequence[Tool] = ()
) -> tuple[APIResponse, Conversation | None]:
    """Answer one item: up to `item_attempts` runs while the answer is an error (one that
    another run would get again, a 400 say, ends it at once). Returns
    the response and, for agent loops, the conversation with every message added."""
    response = APIResponse(is_error=True, error_message="not run")
    conversation: Conversation | None = None
    for run in range(spec.item_attempts):
        if run:
            await asyncio.sleep(spec.retry_delay * 2**run)
        if spec.tools:
            conversation, response = await client.run_agent_loop(
                item, tools=list(tools), max_rounds=spec.max_rounds
            )
        else:
            response = await client.start(item)
        if not response.is_error or response.status_code in PERMANENT_STATUSES:
            break
    return response, conversation


def result_json(index: int, response: APIResponse, conversation: Conversation | None) -> str:
    data: dict[str, Any] = response.model_copy(update={"id": index}).model_dump(mode="json")
    if conversation is not None:
        data["conversation"] = conversation.to_openai()
    return json.dumps(data, ensure_ascii=False)


def read_result(raw: str) -> tuple[APIResponse, Conversation | None]:
    try:
        data = json.loads(raw)
        conversation = data.pop("conversation", None) if isinstance(data, dict) else None
        response = APIResponse.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise PayloadError(f"batch result is not an APIResponse: {exc}") from exc
    return response, (Conversation.from_openai(conversation) if conversation else None)
