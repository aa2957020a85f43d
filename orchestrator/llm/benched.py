"""Benched API keys as a worker reports them in its heartbeat, and as readers see them.

    report_benched_keys(models)       the worker side: JSON-ready entries, one per key resting
                                      in the pools of these models (FallbackLLM's included)
    read_benched_keys(worker, now)    the reader side (`worker --check`, `/metrics`): the
                                      entries of one heartbeat, validated (Redis contents are
                                      untrusted) and aged by the heartbeat's age

A key is named by its place in its pool (`key_index` of `keys`), never by its text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import structlog
from pydantic import BaseModel, Field, ValidationError

from orchestrator.llm.fallback import FallbackLLM
from orchestrator.llm.key_pool import APIKeyPool
from orchestrator.llm.openai_compatible import OpenAICompatible

__all__ = ["INFO_FIELD", "BenchedKeyReport", "read_benched_keys", "report_benched_keys"]

log = structlog.get_logger(__name__)

# The field of a worker's heartbeat info that holds its benched keys.
INFO_FIELD = "benched_keys"


class BenchedKeyReport(BaseModel):
    """One API key resting after a 401/403 on one worker."""

    model: str = Field(max_length=500)
    provider: str | None = Field(default=None, max_length=500)
    key_index: int = Field(ge=1)
    keys: int = Field(ge=1)
    status: int
    retry_in_s: float = Field(ge=0)

    @property
    def label(self) -> str:
        return f"API key #{self.key_index} of {self.keys}"


def _pools(models: Iterable[object]) -> Iterator[tuple[str, APIKeyPool]]:
    for model in models:
        if isinstance(model, FallbackLLM):
            yield from _pools(model.models)
        elif isinstance(model, OpenAICompatible):
            yield model.model_name, model.key_pool


def report_benched_keys(models: Iterable[object]) -> list[dict[str, Any]]:
    """Every key resting now in the pools of `models`, each pool once (a pool shared by
    several models is reported under the first), ready for a heartbeat's JSON."""
    seen: set[int] = set()
    reports: list[dict[str, Any]] = []
    for model_name, pool in _pools(models):
        if id(pool) in seen:
            continue
        seen.add(id(pool))
        for benched in pool.benched():
            report = BenchedKeyReport(
                model=model_name,
                provider=pool.provider_id or None,
                key_index=benched.index,
                keys=benched.keys,
                status=benched.status,
                retry_in_s=round(max(0.0, benched.retry_in_s), 3),
            )
            reports.append(report.model_dump())
    return reports


def read_benched_keys(worker: Mapping[str, Any], now: float) -> list[BenchedKeyReport]:
    """The keys one worker's heartbeat (`WorkerRegistry.list()` entry) reports benched,
    with `retry_in_s` counted from `now` (epoch seconds); keys whose rest is over by now,
    and malformed entries (logged), are left out."""
    entries = worker.get(INFO_FIELD)
    if not isinstance(entries, list):
        return []
    try:
        age = max(0.0, now - float(worker.get("last_beat", now)))
    except (TypeError, ValueError):
        age = 0.0
    reports: list[BenchedKeyReport] = []
    for entry in entries:
        try:
            report = BenchedKeyReport.model_validate(entry)
        except ValidationError as exc:
            log.warning(
                "workers.bad_benched_key", worker_id=worker.get("worker_id"), error=str(exc)
            )
            continue
        left = report.retry_in_s - age
        if left > 0:
            reports.append(report.model_copy(update={"retry_in_s": left}))
    return reports
