"""`LLMClient`: lm-deluge's client over this project's model adapters.

One model or several (`model_weights`), sampling options, requests/tokens-per-minute and
concurrency limits, `start` with model stickiness and fallback, `process_prompts_async`
for many prompts (results in input order), and `run_agent_loop` with tools.

Retries live here (`max_attempts` in all, across models): each attempt is one HTTP
request (the adapters are built with `max_retries=0`), so every attempt passes the rate
limiter, and an attempt after a failure goes to another model when there is one. A
status retrying cannot fix (`LLMHTTPError`: 400, 401, 404, ...) is not sent to the same
model again.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import structlog

from orchestrator.deluge.conversation import (
    Conversation,
    Message,
    Prompt,
    ToolResult,
    as_conversation,
)
from orchestrator.deluge.limits import RequestLimiter, SlidingWindow
from orchestrator.deluge.models import ModelRegistry, ModelSpec, default_registry
from orchestrator.deluge.progress import ProgressMode, make_progress
from orchestrator.deluge.response import APIResponse, Usage
from orchestrator.deluge.tool import Tool
from orchestrator.errors import ConfigError, LLMError, LLMHTTPError, ToolError
from orchestrator.llm.anthropic import AnthropicMessages
from orchestrator.llm.openai_compatible import OpenAICompatible
from orchestrator.llm.retry import RetryableFailure, RetryPolicy
from orchestrator.ports import ChunkAccumulator, LLMInterface
from orchestrator.runtime.tools import format_tool_result

_log = structlog.get_logger(__name__)
ToolLike = Tool | Any  # a Tool, or a plain function (wrapped with Tool.from_function)
_CHARS_PER_TOKEN = 4
# The HTTP adapters of the top-level call running in this task (and the tasks it starts):
# connections live as long as one start / process_prompts_async / run_agent_loop call.
_CALL_ADAPTERS: ContextVar[dict[tuple[int, str], LLMInterface] | None] = ContextVar(
    "deluge_call_adapters", default=None
)


class LLMClient:
    """Send prompts to one or several models under rate limits.

    `model_names`: a registered name or a list of them; `model_weights` the odds of each
    (default: equal). `max_attempts` counts HTTP attempts per prompt across models.
    `limiter` replaces the in-process sliding window (pass
    `orchestrator.store.rate_limits.RedisRateLimiter` to share limits with other
    processes). `environ` is where API keys are read (default: `os.environ`, read once
    here). `progress`: "auto" (a bar on a terminal), "rich", "plain" or "none".
    HTTP connections last one top-level call (like lm-deluge's session per call) unless
    `keep_connections=True`, which keeps them until `aclose()`.
    """

    def __init__(
        self,
        model_names: str | Sequence[str] = "gpt-4o-mini",
        *,
        model_weights: Sequence[float] | None = None,
        max_new_tokens: int = 512,
        temperature: float = 0.75,
        top_p: float = 1.0,
        max_requests_per_minute: int = 1_000,
        max_tokens_per_minute: int = 100_000,
        max_concurrent_requests: int = 225,
        max_attempts: int = 5,
        request_timeout: float = 30.0,
        retry_delay: float = 0.5,
        stream: bool = False,
        progress: ProgressMode = "auto",
        limiter: RequestLimiter | None = None,
        registry: ModelRegistry | None = None,
        environ: Mapping[str, str] | None = None,
        keep_connections: bool = False,
        **extra_params: Any,
    ) -> None:
        names = [model_names] if isinstance(model_names, str) else list(model_names)
        if not names:
            raise ConfigError("LLMClient needs at least one model name")
        registry = registry or default_registry
        self.specs: dict[str, ModelSpec] = {name: registry.get(name) for name in names}
        self.models = names
        self.model_weights = _weights(names, model_weights)
        self.max_new_tokens = max_new_tokens
        self.sampling: dict[str, Any] = {"temperature": temperature, "top_p": top_p}
        self.sampling.update(extra_params)
        self.max_attempts = max(1, max_attempts)
        self.max_requests_per_minute = max_requests_per_minute
        self.max_tokens_per_minute = max_tokens_per_minute
        self.max_concurrent_requests = max_concurrent_requests
        self.request_timeout = request_timeout
        self.stream = stream
        self.progress = progress
        self.limiter: RequestLimiter = limiter or SlidingWindow(
            max_requests_per_minute, max_tokens_per_minute
        )
        self._retry = RetryPolicy(
            max_retries=self.max_attempts, retry_delay=retry_delay, max_retry_delay=10.0
        )
        self._environ = dict(os.environ if environ is None else environ)
        self.keep_connections = keep_connections
        self._adapters: dict[tuple[int, str], LLMInterface] = {}
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ one prompt

    async def start(
        self,
        prompt: Prompt,
        *,
        tools: Sequence[ToolLike] | None = None,
        prefer_model: str | None = None,
    ) -> APIResponse:
        """Send one prompt; the answer, or an error response once every attempt failed.

        `prefer_model`: a model name, or "last" for the conversation's `model_used`
        (stickiness); when that model fails the next attempt goes to another one.
        """
        async with self._connections():
            return await self._start(as_conversation(prompt), tools, prefer_model)

    async def _start(
        self,
        conversation: Conversation,
        tools: Sequence[ToolLike] | None,
        prefer_model: str | None,
    ) -> APIResponse:
        messages = conversation.to_openai()
        definitions = [t.definition() for t in _as_tools(tools)] or None
        model = self._resolve(prefer_model, conversation)
        estimate = _estimate_tokens(messages) + self.max_new_tokens
        failures: list[str] = []
        error: LLMError | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                completion = await self._call(model, messages, definitions, estimate)
            except LLMError as exc:
                error = exc
                failures.append(model)
                if isinstance(exc, LLMHTTPError) and not self._untried(failures):
                    break  # a 4xx the same model would answer again: do not spend the limit
                if attempt == self.max_attempts:
                    break
                model = await self._next_model(model, failures, _retry_after(exc))
                continue
            return self._response(model, completion, attempt)
        return APIResponse(
            model_internal=failures[-1] if failures else model,
            is_error=True,
            error_message=str(error) if error else "no attempt made",
            status_code=error.status_code if error else None,
            attempts=len(failures),
        )

    async def _call(
        self,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        estimate: int,
    ) -> dict[str, Any]:
        adapter = self._adapter(model)
        params = {"max_tokens": self.max_new_tokens, **self.sampling}
        async with self._slots():
            await self.limiter.acquire(estimate)
            if not self.stream:
                return await adapter.chat(messages, tools=tools, **params)
            accumulator = ChunkAccumulator()
            async for chunk in adapter.chat_stream(messages, tools=tools, **params):
                accumulator.add(chunk)
            return accumulator.completion()

    def _untried(self, failures: list[str]) -> list[str]:
        return [m for m in self.models if m not in failures]

    async def _next_model(
        self, failed: str, failures: list[str], retry_after: float | None = None
    ) -> str:
        """Another model when there is one not failed yet in this call; else the same
        one again, after a backoff (the server's Retry-After when it sent one)."""
        others = self._untried(failures)
        if others:
            return self._pick(others)
        await asyncio.sleep(self._retry.delay(failures.count(failed) - 1, retry_after))
        return failed

    def _response(self, model: str, completion: dict[str, Any], attempts: int) -> APIResponse:
        accumulator = ChunkAccumulator()
        accumulator.add_completion(completion)
        usage = Usage.from_openai(accumulator.usage)
        return APIResponse(
            model_internal=model,
            message=accumulator.message(),
            usage=usage,
            cost=self.specs[model].cost(usage.input_tokens, usage.output_tokens),
            finish_reason=accumulator.finish_reason(),
            attempts=attempts,
        )

    # ------------------------------------------------------------------ many prompts

    async def process_prompts_async(
        self,
        prompts: Sequence[Prompt],
        *,
        tools: Sequence[ToolLike] | None = None,
        show_progress: bool = True,
        prefer_model: str | None = None,
        return_completions_only: bool = False,
    ) -> list[Any]:
        """Every prompt's `APIResponse` (or completion text), in input order."""
        progress = make_progress(self.progress if show_progress else "none", len(prompts))

        async def one(index: int, prompt: Prompt) -> APIResponse:
            response = await self.start(prompt, tools=tools, prefer_model=prefer_model)
            response.id = index
            progress.advance(response.cost)
            return response

        try:
            async with self._connections():
                responses = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
        finally:
            progress.close()
        if return_completions_only:
            return [r.completion for r in responses]
        return list(responses)

    def process_prompts_sync(self, prompts: Sequence[Prompt], **kwargs: Any) -> list[Any]:
        """`process_prompts_async` from synchronous code (not inside a running loop)."""
        return asyncio.run(self.process_prompts_async(prompts, **kwargs))

    # ------------------------------------------------------------------ agent loops

    async def run_agent_loop(
        self,
        conversation: Prompt,
        *,
        tools: Sequence[ToolLike] | None = None,
        max_rounds: int = 5,
        prefer_model: str | None = None,
    ) -> tuple[Conversation, APIResponse]:
        """Ask, run the tools the model calls, feed back the results, repeat until it
        answers without calling tools (or `max_rounds` calls). Returns the conversation
        with every message added (a copy) and the last response."""
        async with self._connections():
            return await self._agent_loop(
                as_conversation(conversation).copy(), tools, max_rounds, prefer_model
            )

    async def _agent_loop(
        self,
        working: Conversation,
        tools: Sequence[ToolLike] | None,
        max_rounds: int,
        prefer_model: str | None,
    ) -> tuple[Conversation, APIResponse]:
        toolkit = {t.name: t for t in _as_tools(tools)}
        response: APIResponse | None = None
        model_for_round = prefer_model
        for _ in range(max(1, max_rounds)):
            response = await self.start(
                working, tools=list(toolkit.values()), prefer_model=model_for_round
            )
            content = response.content
            if response.is_error or content is None:
                break
            model_for_round = response.model_internal  # stick within the loop
            working.with_message(content, model_used=response.model_internal)
            if not content.tool_calls:
                break
            results = await asyncio.gather(
                *(_run_tool(toolkit, call.name, call.arguments) for call in content.tool_calls)
            )
            working.add(
                Message.tool(
                    ToolResult(call.id, result)
                    for call, result in zip(content.tool_calls, results, strict=True)
                )
            )
        assert response is not None  # at least one round ran
        return working, response

    async def process_agent_loops_async(
        self,
        prompts: Sequence[Prompt],
        *,
        tools: Sequence[ToolLike] | None = None,
        max_rounds: int = 5,
        max_concurrent_agents: int = 10,
        show_progress: bool = True,
    ) -> list[tuple[Conversation, APIResponse]]:
        """`run_agent_loop` on every prompt, `max_concurrent_agents` at a time; results
        in input order. A loop that raised comes back as an error response."""
        progress = make_progress(self.progress if show_progress else "none", len(prompts))
        slots = asyncio.Semaphore(max(1, max_concurrent_agents))

        async def one(index: int, prompt: Prompt) -> tuple[Conversation, APIResponse]:
            async with slots:
                try:
                    conv, response = await self.run_agent_loop(
                        prompt, tools=tools, max_rounds=max_rounds
                    )
                except (LLMError, ToolError, ConfigError) as exc:
                    conv = as_conversation(prompt)
                    response = APIResponse(is_error=True, error_message=str(exc))
            response.id = index
            progress.advance(response.cost)
            return conv, response

        try:
            async with self._connections():
                return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))
        finally:
            progress.close()

    def process_agent_loops_sync(
        self, prompts: Sequence[Prompt], **kwargs: Any
    ) -> list[tuple[Conversation, APIResponse]]:
        return asyncio.run(self.process_agent_loops_async(prompts, **kwargs))

    def run_agent_loop_sync(
        self, conversation: Prompt, **kwargs: Any
    ) -> tuple[Conversation, APIResponse]:
        return asyncio.run(self.run_agent_loop(conversation, **kwargs))

    # ------------------------------------------------------------------ helpers

    def _resolve(self, prefer_model: str | None, conversation: Conversation) -> str:
        if prefer_model == "last":
            prefer_model = conversation.model_used
        if prefer_model in self.specs:
            return prefer_model
        return self._pick(self.models)

    def _pick(self, names: Sequence[str]) -> str:
        weights = [self.model_weights[self.models.index(n)] for n in names]
        return random.choices(list(names), weights=weights)[0]

    def _adapter(self, name: str) -> LLMInterface:
        adapters = _CALL_ADAPTERS.get()
        if adapters is None or self.keep_connections:
            adapters = self._adapters
        adapter = adapters.get((id(self), name))
        if adapter is None:
            adapter = build_adapter(self.specs[name], self._environ, self.request_timeout)
            adapters[(id(self), name)] = adapter
        return adapter

    @asynccontextmanager
    async def _connections(self) -> AsyncIterator[None]:
        """Open a scope for HTTP connections unless one is open (or they are kept)."""
        if self.keep_connections or _CALL_ADAPTERS.get() is not None:
            yield
            return
        adapters: dict[tuple[int, str], LLMInterface] = {}
        token = _CALL_ADAPTERS.set(adapters)
        try:
            yield
        finally:
            _CALL_ADAPTERS.reset(token)
            await _close_all(adapters)

    def _slots(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:
            self._semaphore = asyncio.Semaphore(self.max_concurrent_requests)
            self._semaphore_loop = loop
        return self._semaphore

    async def aclose(self) -> None:
        """Close the connections kept with `keep_connections=True`."""
        adapters, self._adapters = self._adapters, {}
        await _close_all(adapters)

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def _close_all(adapters: Mapping[Any, LLMInterface]) -> None:
    for adapter in adapters.values():
        close = getattr(adapter, "aclose", None)
        if close is not None:
            await close()


def build_adapter(spec: ModelSpec, environ: Mapping[str, str], timeout: float) -> LLMInterface:
    """The HTTP adapter for one registered model (one attempt per call: no retries)."""
    key = spec.api_key(environ)
    kind = AnthropicMessages if spec.provider == "anthropic" else OpenAICompatible
    return kind(key, spec.provider_model, spec.api_base, max_retries=0, timeout=timeout)


def _retry_after(exc: LLMError) -> float | None:
    """The Retry-After of the 429/503 behind a failed attempt, if the server sent one."""
    cause = exc.__cause__
    return cause.retry_after if isinstance(cause, RetryableFailure) else None


def _weights(names: list[str], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(names)
    if len(weights) != len(names) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError("model_weights needs one non-negative weight per model")
    return [float(w) for w in weights]


def _as_tools(tools: Sequence[ToolLike] | None) -> list[Tool]:
    made: list[Tool] = []
    for item in tools or ():
        made.append(item if isinstance(item, Tool) else Tool.from_function(item))
    return made


def _estimate_tokens(messages: list[dict[str, Any]]) -> int:
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    return chars // _CHARS_PER_TOKEN + len(messages)


async def _run_tool(toolkit: dict[str, Tool], name: str, arguments: dict[str, Any]) -> str:
    tool = toolkit.get(name)
    if tool is None:
        return f"Error: no tool named {name!r}"
    try:
        return format_tool_result(await tool.invoke(arguments))
    except ToolError as exc:
        return f"Error: {exc}"
    except Exception as exc:  # the model sees the failure and may try otherwise
        _log.warning("deluge.tool_failed", tool=name, error=repr(exc))
        return f"Error: {type(exc).__name__}: {exc}"
