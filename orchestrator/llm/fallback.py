"""`FallbackLLM`: several models behind one `LLMInterface`; when one fails, the next tries.

Each model keeps its own retries; the fallback only acts once a model has given up
(`LLMRetriesExhausted`) or answered a status that another model may not (5xx, and
401/403/404, which also bench that model for `bench_s` seconds, a minute by default, before
it is tried again). Other errors (a 400, an unreadable answer) are the request's fault and
are raised at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import structlog

from orchestrator.errors import ConfigError, LLMError, LLMHTTPError, LLMRetriesExhausted
from orchestrator.events import MessageList
from orchestrator.llm.key_pool import DEFAULT_COOLDOWN_S, format_wait
from orchestrator.ports import LLMInterface

log = structlog.get_logger(__name__)

_BENCH_STATUSES = frozenset({401, 403, 404})


class FallbackLLM:
    """Try models in turn: in the given order, or in a weighted random order per call.

    `weights` (one per model) spread the first choice, the way lm-deluge's `model_weights`
    do; the remaining models follow in weighted order as fallbacks. A stream falls back
    only before its first chunk: once a model has started answering, its failure is raised,
    since two models' answers cannot be spliced into one.
    """

    def __init__(
        self,
        models: Sequence[LLMInterface],
        weights: Sequence[float] | None = None,
        *,
        rng: random.Random | None = None,
        bench_s: float = DEFAULT_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not models:
            raise ConfigError("FallbackLLM needs at least one model")
        if weights is not None and (
            len(weights) != len(models) or any(w < 0 for w in weights) or not any(weights)
        ):
            raise ConfigError("FallbackLLM weights: one non-negative weight per model, not all 0")
        if not bench_s >= 0:
            raise ConfigError(f"FallbackLLM bench_s must be 0 or more seconds, not {bench_s!r}")
        self.models = list(models)
        self.weights = list(weights) if weights is not None else None
        self.model_name = "|".join(model.model_name for model in self.models)
        self.bench_s = float(bench_s)
        self._benched_until: dict[int, float] = {}
        self._clock = clock
        self._rng = rng or random.Random()

    @property
    def benched(self) -> set[int]:
        """Indexes of the models resting now (after a 401/403/404)."""
        now = self._clock()
        return {index for index, until in self._benched_until.items() if until > now}

    async def chat(
        self, messages: MessageList, *, tools: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        last: LLMError | None = None
        for index in self._order():
            try:
                return await self.models[index].chat(messages, tools=tools, **kwargs)
            except (LLMRetriesExhausted, LLMHTTPError) as exc:
                self._give_up_on(index, exc)
                last = exc
        raise self._nothing_left(last)

    async def chat_stream(
        self, messages: MessageList, *, tools: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        last: LLMError | None = None
        for index in self._order():
            started = False
            try:
                async for chunk in self.models[index].chat_stream(messages, tools=tools, **kwargs):
                    started = True
                    yield chunk
                return
            except (LLMRetriesExhausted, LLMHTTPError) as exc:
                if started:
                    raise
                self._give_up_on(index, exc)
                last = exc
        raise self._nothing_left(last)

    def _order(self) -> list[int]:
        benched = self.benched
        candidates = [i for i in range(len(self.models)) if i not in benched]
        if self.weights is None:
            return candidates
        order: list[int] = []
        while candidates:
            weights = [self.weights[i] for i in candidates]
            if not any(weights):
                order += candidates
                break
            pick = self._rng.choices(candidates, weights)[0]
            order.append(pick)
            candidates.remove(pick)
        return order

    def _give_up_on(self, index: int, exc: LLMError) -> None:
        status = exc.status_code
        if isinstance(exc, LLMHTTPError) and not (
            status in _BENCH_STATUSES or (status or 0) >= 500
        ):
            raise exc  # the request itself is at fault; another model will not do better
        benched = isinstance(exc, LLMHTTPError) and status in _BENCH_STATUSES
        if benched:
            self._benched_until[index] = self._clock() + self.bench_s
        log.warning(
            "llm.fallback",
            model=self.models[index].model_name,
            status=status,
            benched=benched,
            retry_in_s=self.bench_s if benched else None,
            error=str(exc),
        )

    def _nothing_left(self, last: LLMError | None) -> LLMError:
        if last is not None:
            return last
        now = self._clock()
        index, until = min(self._benched_until.items(), key=lambda item: item[1])
        return LLMHTTPError(
            f"{self.model_name}: every model is benched (401/403/404 earlier); "
            f"{self.models[index].model_name} is tried again in {format_wait(until - now)}",
            model=self.model_name,
        )
