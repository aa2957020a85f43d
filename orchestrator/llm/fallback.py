"""`FallbackLLM`: several models behind one `LLMInterface`; when one fails, the next tries.

Each model keeps its own retries; the fallback only acts once a model has given up
(`LLMRetriesExhausted`) or answered a status that another model may not (5xx, 404, and
401/403, which also bench that model for the life of the instance). Other errors (a 400,
an unreadable answer) are the request's fault and are raised at once.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import structlog

from orchestrator.errors import ConfigError, LLMError, LLMHTTPError, LLMRetriesExhausted
from orchestrator.events import MessageList
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
    ) -> None:
        if not models:
            raise ConfigError("FallbackLLM needs at least one model")
        if weights is not None and (
            len(weights) != len(models) or any(w < 0 for w in weights) or not any(weights)
        ):
            raise ConfigError("FallbackLLM weights: one non-negative weight per model, not all 0")
        self.models = list(models)
        self.weights = list(weights) if weights is not None else None
        self.model_name = "|".join(model.model_name for model in self.models)
        self.benched: set[int] = set()
        self._rng = rng or random.Random()

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
        candidates = [i for i in range(len(self.models)) if i not in self.benched]
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
        if isinstance(exc, LLMHTTPError) and status in _BENCH_STATUSES:
            self.benched.add(index)
        log.warning(
            "llm.fallback",
            model=self.models[index].model_name,
            status=status,
            benched=index in self.benched,
            error=str(exc),
        )

    def _nothing_left(self, last: LLMError | None) -> LLMError:
        if last is not None:
            return last
        return LLMHTTPError(
            f"{self.model_name}: every model is benched (401/403/404 earlier)",
            model=self.model_name,
        )
