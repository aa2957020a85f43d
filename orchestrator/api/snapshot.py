"""What one /metrics scrape read from Redis (plain data: no prometheus-client here)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.llm.benched import BenchedKeyReport
from orchestrator.runs import RunRecord
from orchestrator.store.latency import Histogram

__all__ = ["TOKEN_KINDS", "MetricsSnapshot", "WorkerGauges", "quantile"]

TOKEN_KINDS = ("prompt_tokens", "completion_tokens", "total_tokens")


@dataclass
class WorkerGauges:
    """What one live worker's heartbeat says."""

    worker_id: str
    host: str
    busy_slots: int
    slots: int
    benched_keys: int
    draining: bool

    @classmethod
    def from_heartbeat(cls, beat: Mapping[str, Any], benched_keys: int = 0) -> WorkerGauges:
        def number(name: str) -> int:
            value = beat.get(name)
            return int(value) if isinstance(value, int | float) and math.isfinite(value) else 0

        return cls(
            worker_id=str(beat.get("worker_id", "")),
            host=str(beat.get("host", "")),
            busy_slots=number("running"),
            slots=number("concurrency"),
            benched_keys=benched_keys,
            draining=beat.get("draining") is True,
        )


@dataclass
class MetricsSnapshot:
    """What one scrape found."""

    queue_depth: int
    runs_by_status: dict[str, int]
    live_workers: int
    open_api: bool
    # From the most recent runs (a window, not all history): seconds queued before start.
    dispatch_latencies_s: list[float] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)
    sampled_runs: int = 0
    # (worker id, key) for every API key a live worker has benched after a 401/403.
    benched_keys: list[tuple[str, BenchedKeyReport]] = field(default_factory=list)
    workers: list[WorkerGauges] = field(default_factory=list)
    # store.latency's metric -> its histogram, over every worker.
    histograms: dict[str, Histogram] = field(default_factory=dict)

    @classmethod
    def from_runs(
        cls,
        recent: Sequence[RunRecord],
        *,
        queue_depth: int,
        runs_by_status: dict[str, int],
        live_workers: int,
        open_api: bool,
        benched_keys: Sequence[tuple[str, BenchedKeyReport]] = (),
        workers: Sequence[WorkerGauges] = (),
        histograms: Mapping[str, Histogram] | None = None,
    ) -> MetricsSnapshot:
        latencies = [r.queue_ms / 1000.0 for r in recent if r.queue_ms is not None]
        tokens = dict.fromkeys(TOKEN_KINDS, 0)
        for record in recent:
            for kind in TOKEN_KINDS:
                value = (record.usage or {}).get(kind)
                if isinstance(value, int):
                    tokens[kind] += value
        return cls(
            queue_depth=queue_depth,
            runs_by_status=runs_by_status,
            live_workers=live_workers,
            open_api=open_api,
            dispatch_latencies_s=latencies,
            tokens=tokens,
            sampled_runs=len(recent),
            benched_keys=list(benched_keys),
            workers=list(workers),
            histograms=dict(histograms or {}),
        )


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank); NaN for no values, as Prometheus expects."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[min(rank, len(ordered) - 1)]
