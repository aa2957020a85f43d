"""`OpenAICompatible`: any chat-completions server (OpenAI, vLLM, llama.cpp, Ollama, the
scripted model), reached over httpx.

One instance is one model at one base URL. It owns a key pool (least-loaded key, rejected
keys benched for a cool-down), a rate limiter (a local token bucket unless one is passed
in) and a retry policy. Every retry decision is taken in `_with_retries`; both `chat` and
`chat_stream` run through it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import structlog

from orchestrator.errors import (
    ConfigError,
    LLMError,
    LLMHTTPError,
    LLMResponseError,
    LLMRetriesExhausted,
)
from orchestrator.events import MessageList
from orchestrator.llm.config import DEFAULT_CONTEXT_WINDOW, ModelConfig, load_provider_file
from orchestrator.llm.h11_transport import H11Transport
from orchestrator.llm.http import HTTPPool, body_bytes
from orchestrator.llm.key_pool import (
    DEFAULT_COOLDOWN_S,
    APIKeyPool,
    NoUsableKey,
    format_wait,
    scrub,
)
from orchestrator.llm.messages import wire_messages
from orchestrator.llm.rate_limit import RateLimiter, TokenBucket, Unlimited
from orchestrator.llm.retry import (
    KEY_REJECTED_STATUSES,
    RETRY_AFTER_STATUSES,
    RETRYABLE_STATUSES,
    RETRYABLE_TRANSPORT_ERRORS,
    RetryableFailure,
    RetryPolicy,
    parse_retry_after,
    rejected_as_invalid,
)
from orchestrator.llm.shards import HTTPShards
from orchestrator.llm.sse import DecodedData, SSEEvent, SSEParser, decode_data
from orchestrator.llm.stream import StreamResumer

# Requests in flight at once per model instance (the HTTP pool keeps as many connections).
DEFAULT_MAX_CONCURRENT_REQUESTS = 256
# After `[DONE]`, how long and how much the client reads towards the body's end (to reuse
# the connection) before it gives the connection up (see read_to_end).
DRAIN_TIMEOUT_S = 0.25
DRAIN_MAX_EVENTS = 16

log = structlog.get_logger(__name__)

Chunk = dict[str, Any]
_Attempt = Callable[[str, HTTPPool], AsyncIterator[Chunk]]


class _KeyRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _StreamOptionsRejected(Exception):
    pass


class OpenAICompatible:
    """A chat model behind an OpenAI-compatible `/chat/completions` endpoint.

    `api_keys` is one key, several keys (the least-loaded one serves each request), or a
    ready `APIKeyPool` (SimpleLLMFunc's `api_key_pool=` keyword is accepted too). Use `""`
    for local servers without auth. A key the server rejects (401/403) rests for
    `key_cooldown_s` seconds (default 60), then is tried again; the other keys serve
    meanwhile (a ready pool brings its own `cooldown_s`). `max_retries` counts retries
    after the first attempt.
    `rate_limit_capacity`/`rate_limit_refill_rate` (requests, requests per second) turn on
    a local token bucket; pass `rate_limiter=` to share a limit with other processes.
    Extra keyword arguments are default request parameters (`temperature=0.2`, ...), which
    the keyword arguments of each call override.

    `max_concurrent_requests` bounds the requests in flight at once (streams included):
    the HTTP pool keeps that many connections alive, and a request beyond the bound waits
    for a free slot (no pool timeout, no retry), so thousands of concurrent agents queue
    instead of failing.

    Nothing here reads the environment; `transport=` swaps the HTTP transport (tests use
    `httpx.MockTransport`).
    """

    def __init__(
        self,
        api_keys: str | Sequence[str] | APIKeyPool | None = None,
        model_name: str = "",
        base_url: str = "",
        *,
        max_retries: int = 5,
        retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
        timeout: float = 60.0,
        rate_limit_capacity: int | None = None,
        rate_limit_refill_rate: float | None = None,
        context_window: int | None = None,
        rate_limiter: RateLimiter | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        api_key_pool: APIKeyPool | None = None,
        key_cooldown_s: float | None = None,
        max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
        **default_llm_kwargs: Any,
    ) -> None:
        if not model_name or not base_url:
            raise ConfigError("OpenAICompatible needs a model_name and a base_url")
        if max_concurrent_requests < 1:
            raise ConfigError(f"{model_name}: max_concurrent_requests must be at least 1")
        self.max_concurrent_requests = max_concurrent_requests
        self.model_name = model_name
        self.base_url = base_url.rstrip("/")
        self.context_window = context_window or DEFAULT_CONTEXT_WINDOW
        self.key_pool = _build_key_pool(api_key_pool or api_keys, model_name, key_cooldown_s)
        self.rate_limiter = rate_limiter or _build_limiter(
            rate_limit_capacity, rate_limit_refill_rate
        )
        try:
            self.retry_policy = RetryPolicy(max_retries, retry_delay, max_retry_delay)
        except ValueError as exc:
            raise ConfigError(f"{model_name}: {exc}") from exc
        self.default_llm_kwargs = default_llm_kwargs
        self.stream_options_supported = True
        self.malformed_chunks = 0
        # No pool timeout: the slots below bound the requests, so one waiting for a
        # connection only waits for another request to finish.
        self._timeout = httpx.Timeout(timeout, pool=None)
        self._transport = transport
        # Absolute, parsed once: httpx parses a relative URL against base_url per request.
        self._chat_url = httpx.URL(f"{self.base_url}/chat/completions")
        # One TLS context for every pool (building one reads the CA bundle: ~40 ms).
        self._ssl_context: ssl.SSLContext | None = None
        # The request slots and the connection pool (one HTTPShards pool: see _pools).
        self._shards: HTTPShards[HTTPPool] | None = None
        self._shards_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_config(
        cls,
        config: ModelConfig,
        *,
        provider: str = "",
        transport: httpx.AsyncBaseTransport | None = None,
        rate_limiter: RateLimiter | None = None,
    ) -> OpenAICompatible:
        """Build a model from one validated provider.json entry."""
        return cls(
            APIKeyPool(
                config.api_keys,
                f"{provider}-{config.model_name}" if provider else "",
                cooldown_s=config.key_cooldown_s,
            ),
            config.model_name,
            config.base_url,
            max_retries=config.max_retries,
            retry_delay=config.retry_delay,
            max_retry_delay=config.max_retry_delay,
            timeout=config.timeout,
            rate_limit_capacity=config.rate_limit_capacity,
            rate_limit_refill_rate=config.rate_limit_refill_rate,
            context_window=config.context_window,
            rate_limiter=rate_limiter,
            transport=transport,
            **config.llm_kwargs,
        )

    @classmethod
    def load_from_json_file(cls, path: str | Path) -> dict[str, dict[str, OpenAICompatible]]:
        """Every model of a provider.json, as `models[provider][model_name]`.

        Raises `ConfigError` naming the file and the entry when the file is unusable.
        """
        return {
            provider: {
                config.model_name: cls.from_config(config, provider=provider) for config in configs
            }
            for provider, configs in load_provider_file(path).items()
        }

    def __repr__(self) -> str:
        return f"OpenAICompatible(model_name={self.model_name!r}, base_url={self.base_url!r})"

    @property
    def max_retries(self) -> int:
        return self.retry_policy.max_retries

    async def aclose(self) -> None:
        """Close the HTTP connections. The instance reconnects if used again."""
        shards, self._shards = self._shards, None
        if shards is not None:
            await shards.aclose()

    async def __aenter__(self) -> OpenAICompatible:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ----------------------------------------------------------------- public calls

    async def chat(
        self, messages: MessageList, *, tools: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """One chat.completion (as a JSON dict), retried as the policy allows.

        Raises `LLMHTTPError` (a status retrying cannot fix), `LLMRetriesExhausted`,
        or `LLMResponseError` (the answer is not a completion).
        """
        kwargs.pop("stream", None)
        kwargs.pop("stream_options", None)
        body = self._body(messages, tools, kwargs)
        attempt = partial(self._attempt_chat, body)
        async with aclosing(self._with_retries(attempt)) as results:
            async for completion in results:
                return completion
        raise LLMResponseError(f"{self.model_name}: no completion received", model=self.model_name)

    def chat_stream(
        self, messages: MessageList, *, tools: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """chat.completion.chunk dicts as they arrive; the usage-only chunk comes last.

        A stream that drops is retried, and the retried stream is trimmed so that nothing
        already yielded is yielded again (see `StreamResumer` for the limits of that with a
        sampling model). Malformed chunks are skipped, logged and counted in
        `malformed_chunks`.
        """
        kwargs.pop("stream", None)
        resumer = StreamResumer()
        attempt = partial(self._attempt_stream, messages, tools, kwargs, resumer)
        # The retry loop itself (an async generator: closing it closes the stream), not a
        # generator around it that every chunk would pass through.
        return self._with_retries(attempt)

    # ----------------------------------------------------------------- the retry loop

    async def _with_retries(self, attempt: _Attempt) -> AsyncGenerator[Chunk, None]:
        """Run `attempt(key)` until it completes. Retryable failures (429, 5xx, timeouts,
        connection errors, drops) back off and try again; a rejected key is benched and the
        next key tries at once (no key twice in one call); a rejected `stream_options` is
        dropped and tried at once;
        every other error is raised with the attempts counted."""
        failures = 0
        rejected: dict[str, _KeyRejected] = {}  # keys this call saw rejected: not tried again
        cause: Exception
        while True:
            await self.rate_limiter.acquire()
            key = self._acquire_key(rejected, failures + len(rejected))
            try:
                async with self._pools().lease() as client:
                    async for item in attempt(key, client):
                        yield item
                return
            except RetryableFailure as exc:
                failure, cause = exc, exc
            except RETRYABLE_TRANSPORT_ERRORS as exc:
                failure, cause = RetryableFailure(_describe_transport_error(exc)), exc
            except _KeyRejected as exc:
                self.key_pool.bench(key, status=exc.status, model=self.model_name)
                rejected[key] = exc
                continue
            except _StreamOptionsRejected:
                self._drop_stream_options()
                continue
            except LLMError as exc:
                exc.attempts = failures + 1
                raise
            finally:
                self.key_pool.release(key)
            failures += 1
            await self._back_off(failures, failure, cause)

    async def _back_off(self, failures: int, failure: RetryableFailure, cause: Exception) -> None:
        if failures > self.retry_policy.max_retries:
            raise LLMRetriesExhausted(
                f"{self.model_name}: gave up after {failures} attempts; "
                f"last error: {failure.reason}",
                model=self.model_name,
                status_code=failure.status,
                attempts=failures,
            ) from cause
        delay = self.retry_policy.delay(failures - 1, failure.retry_after)
        log.warning(
            "llm.retry",
            model=self.model_name,
            attempt=failures,
            max_retries=self.retry_policy.max_retries,
            reason=failure.reason,
            status=failure.status,
            delay_s=round(delay, 3),
        )
        await asyncio.sleep(delay)

    def _acquire_key(self, rejected: dict[str, _KeyRejected], attempts: int) -> str:
        """The next key to try. When none is usable, the error names the keys this call saw
        rejected (by their place in the pool) and when the earliest benched key returns."""
        try:
            return self.key_pool.acquire(exclude=rejected)
        except NoUsableKey as exc:
            raise self._no_key_error(exc, rejected, attempts) from None

    def _no_key_error(
        self, exc: NoUsableKey, rejected: dict[str, _KeyRejected], attempts: int
    ) -> LLMHTTPError:
        if not rejected:
            # Every key was benched before this call: fail fast, without a request.
            status = exc.earliest.status if exc.earliest is not None else 401
            return LLMHTTPError(
                f"{self.model_name}: {exc}", model=self.model_name, status_code=status
            )
        last = list(rejected.values())[-1]
        labels = [self.key_pool.label(key) for key in rejected]
        if len(labels) == 1:
            what = f"{labels[0]} was rejected"
        else:
            what = f"{', '.join(labels[:-1])} and {labels[-1]} were rejected"
        then = (
            f"{exc.earliest.label} is tried again in {format_wait(exc.earliest.retry_in_s)}"
            if exc.earliest is not None
            else "no other key is left"
        )
        return LLMHTTPError(
            f"{self.model_name}: {what} (HTTP {last.status}: {last.message}); "
            f"no other key is usable now: {then}",
            model=self.model_name,
            status_code=last.status,
            attempts=attempts,
        )

    def _drop_stream_options(self) -> None:
        self.stream_options_supported = False
        log.warning(
            "llm.stream_options_unsupported",
            model=self.model_name,
            detail="server rejected stream_options; streaming without usage from now on",
        )

    # ----------------------------------------------------------------- one attempt

    async def _attempt_chat(
        self, body: dict[str, Any], key: str, client: HTTPPool
    ) -> AsyncIterator[Chunk]:
        response = await client.post(self._chat_url, json=body, headers=_auth(key))
        self._check_status(response, key, sent_stream_options=False)
        yield self._decode_completion(response)

    async def _attempt_stream(
        self,
        messages: MessageList,
        tools: list[dict[str, Any]] | None,
        kwargs: dict[str, Any],
        resumer: StreamResumer,
        key: str,
        client: HTTPPool,
    ) -> AsyncIterator[Chunk]:
        body = self._body(messages, tools, kwargs, stream=True)
        resumer.new_attempt()
        request = client.stream("POST", self._chat_url, json=body, headers=_auth(key))
        async with request as response:
            if not response.is_success:
                await response.aread()
                self._check_status(response, key, sent_stream_options="stream_options" in body)
            if _is_json(response):
                # A server that ignores `stream: true` answers with one whole completion.
                await response.aread()
                chunks: AsyncIterator[Chunk] = _as_chunks(self._decode_completion(response))
            else:
                chunks = self._read_stream(response)
            async for chunk in chunks:
                kept = resumer.filter(chunk)
                if kept is not None:
                    yield kept

    async def _read_stream(self, response: httpx.Response) -> AsyncIterator[Chunk]:
        finished = False
        parser = SSEParser()
        body = aiter(body_bytes(response))
        while True:
            data = await anext(body, None)
            for event in parser.feed(data) if data is not None else parser.close():
                decoded = self._decode_event(event)
                for chunk in decoded.objects:
                    if "error" in chunk and not chunk.get("choices"):
                        self._raise_stream_error(chunk)
                    finished = finished or _is_final(chunk)
                    yield chunk
                if decoded.done:
                    await read_to_end(body)
                    return
            if data is None:
                break
        if not finished:
            raise RetryableFailure("stream ended before [DONE] and before any finish_reason")

    def _decode_event(self, event: SSEEvent) -> DecodedData:
        if event.event == "error":
            self._raise_stream_error({"error": event.data})
        decoded = decode_data(event.data)
        if decoded.malformed:
            self._skip_malformed(event.data)
        return decoded

    # ----------------------------------------------------------------- helpers

    def _pools(self) -> HTTPShards[HTTPPool]:
        """The request slots and HTTP pools of the running loop. Pooled connections belong
        to one event loop; an instance built at import time may be used from several
        loops over its life."""
        loop = asyncio.get_running_loop()
        if self._shards is None or self._shards_loop is not loop:
            # One pool: H11Transport keeps idle connections in a list, so a big pool costs
            # nothing per request (httpcore's did; see HTTPShards).
            total = self.max_concurrent_requests
            self._shards = HTTPShards(self._new_client, total, shard_size=total)
            self._shards_loop = loop
        return self._shards

    def _new_client(self, connections: int) -> HTTPPool:
        transport = self._transport or H11Transport(ssl_context=self._tls(), max_idle=connections)
        return HTTPPool(transport, self.base_url + "/", self._timeout)

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context(trust_env=False)
        return self._ssl_context

    def _body(
        self,
        messages: MessageList,
        tools: list[dict[str, Any]] | None,
        kwargs: dict[str, Any],
        *,
        stream: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {**self.default_llm_kwargs, **kwargs}
        body.update(model=self.model_name, messages=wire_messages(messages))
        if tools:
            body["tools"] = tools
        if stream:
            body["stream"] = True
            if self.stream_options_supported:
                body.setdefault("stream_options", {"include_usage": True})
            else:
                body.pop("stream_options", None)
        return body

    def _check_status(
        self, response: httpx.Response, key: str, *, sent_stream_options: bool
    ) -> None:
        status = response.status_code
        if response.is_success:
            return
        message = scrub(_error_message(response), key)  # some servers echo the key
        if status in KEY_REJECTED_STATUSES:
            raise _KeyRejected(status, message)
        if sent_stream_options and status in (400, 422) and "stream_options" in response.text:
            raise _StreamOptionsRejected(message)
        if status in RETRYABLE_STATUSES and not rejected_as_invalid(
            status, message, _error_kinds(response)
        ):
            retry_after = None
            if status in RETRY_AFTER_STATUSES:
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise RetryableFailure(
                f"HTTP {status}: {message}", status=status, retry_after=retry_after
            )
        raise LLMHTTPError(
            f"{self.model_name}: HTTP {status} from {response.request.url}: {message}",
            model=self.model_name,
            status_code=status,
        )

    def _decode_completion(self, response: httpx.Response) -> Chunk:
        try:
            data = response.json()
        except ValueError as exc:
            raise LLMResponseError(
                f"{self.model_name}: the answer is not JSON: {response.text[:200]!r}",
                model=self.model_name,
                status_code=response.status_code,
            ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            detail = _error_text(data) or f"no 'choices' list in {str(data)[:200]}"
            raise LLMResponseError(
                f"{self.model_name}: not a chat completion: {detail}",
                model=self.model_name,
                status_code=response.status_code,
            )
        return data

    def _raise_stream_error(self, chunk: dict[str, Any]) -> None:
        message = _error_text(chunk) or str(chunk)[:200]
        code = _error_code(chunk)
        kinds = _kinds_of(chunk)
        if code in RETRYABLE_STATUSES and not rejected_as_invalid(code, message, kinds):
            raise RetryableFailure(f"error in stream: {message}", status=code)
        raise LLMResponseError(
            f"{self.model_name}: the server reported an error mid-stream: {message}",
            model=self.model_name,
            status_code=code,
        )

    def _skip_malformed(self, data: str) -> None:
        self.malformed_chunks += 1
        log.warning(
            "llm.malformed_chunk_skipped",
            model=self.model_name,
            data=data[:200],
            malformed_chunks=self.malformed_chunks,
        )


def _build_key_pool(
    keys: str | Sequence[str] | APIKeyPool | None, model_name: str, cooldown_s: float | None
) -> APIKeyPool:
    if isinstance(keys, APIKeyPool):
        if cooldown_s is not None:
            raise ConfigError(
                f"{model_name}: key_cooldown_s goes with a list of keys; "
                "a ready APIKeyPool has its own cooldown_s"
            )
        return keys
    if keys is None:
        raise ConfigError(f"{model_name}: no API keys given (use '' for servers without auth)")
    try:
        return APIKeyPool(keys, cooldown_s=DEFAULT_COOLDOWN_S if cooldown_s is None else cooldown_s)
    except ValueError as exc:
        raise ConfigError(f"{model_name}: {exc}") from exc


def _build_limiter(capacity: int | None, refill_rate: float | None) -> RateLimiter:
    if capacity is None and refill_rate is None:
        return Unlimited()
    if capacity is None or refill_rate is None:
        raise ConfigError("rate_limit_capacity and rate_limit_refill_rate go together")
    try:
        return TokenBucket(capacity, refill_rate)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


async def read_to_end(events: AsyncIterator[object]) -> None:
    """Read what follows `[DONE]` (the body's last bytes, normally just the end of the
    chunked encoding), so that the connection goes back to the pool: a response closed
    before its end closes its connection, and every stream would open a new one. A
    server that keeps the body open longer than `DRAIN_TIMEOUT_S` after `[DONE]`, or
    sends more than `DRAIN_MAX_EVENTS` events (or pieces of the body) after it, loses the
    connection instead; nothing after `[DONE]` is read as part of the answer."""
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            count = 0
            async for _ in events:
                count += 1
                if count >= DRAIN_MAX_EVENTS:
                    return
    except (TimeoutError, httpx.HTTPError):
        # The answer is complete; only the connection is not reused (a broken tail after
        # [DONE], even one that fails to decode, must not fail or retry the answer).
        pass
    finally:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            await closer()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _is_json(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("application/json")


def _is_final(chunk: Chunk) -> bool:
    if chunk.get("usage"):
        return True
    choices = chunk.get("choices") or []
    return any(isinstance(c, dict) and c.get("finish_reason") for c in choices)


async def _as_chunks(completion: Chunk) -> AsyncIterator[Chunk]:
    common = {key: completion.get(key) for key in ("id", "created", "model")}
    choices = [
        {
            "index": choice.get("index", position),
            "delta": choice.get("message") or {},
            "finish_reason": choice.get("finish_reason"),
        }
        for position, choice in enumerate(completion["choices"])
        if isinstance(choice, dict)
    ]
    yield {**common, "object": "chat.completion.chunk", "choices": choices}
    if completion.get("usage"):
        yield {
            **common,
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": completion["usage"],
        }


def _error_message(response: httpx.Response) -> str:
    try:
        text = _error_text(response.json())
    except ValueError:
        text = None
    return text or response.text[:500] or response.reason_phrase


def _error_kinds(response: httpx.Response) -> set[str]:
    try:
        return _kinds_of(response.json())
    except ValueError:
        return set()


def _kinds_of(data: Any) -> set[str]:
    """An error body's `type` and `code` values (OpenAI-style), as strings."""
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return set()
    return {str(error[k]) for k in ("type", "code") if error.get(k) is not None}


def _error_text(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    error = data.get("error", data.get("detail", data.get("message")))
    if isinstance(error, dict):
        error = error.get("message", error)
    return None if error is None else str(error)


def _error_code(chunk: dict[str, Any]) -> int | None:
    error = chunk.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    try:
        return int(code) if code is not None else None
    except (TypeError, ValueError):
        return None


def _describe_transport_error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
