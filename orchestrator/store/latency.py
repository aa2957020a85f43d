"""Latency histograms shared by every worker: `LatencyRecorder` (a worker's pending
observations) and `LatencyHistograms` (the Redis hash they are added to, read by /metrics).

Workers observe dispatch, turn and model-call latencies; the API process serves them.
Each worker counts its observations locally (one bucket per observation, no I/O) and adds
the counts to one Redis hash with its heartbeat (HINCRBY / HINCRBYFLOAT, one pipeline).
The hash holds running totals over every worker that ever served the deployment, so the
histograms only go up: a worker that exits (scaled in by KEDA, killed) takes nothing away
from them, which per-worker totals summed at scrape time would (Prometheus would read
that drop as a counter reset). Observations of a worker killed between two heartbeats
are lost: a couple of seconds' worth at most.

Fields: `<metric>:<le>` (the count of observations in that bucket, not cumulative: the
count is their total) and `<metric>:sum`. A bounded set: three metrics, fixed buckets.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import PayloadError
from orchestrator.keys import Keys
from orchestrator.store._codec import resolve, text
from orchestrator.store.connection import Redis, translate_errors

__all__ = [
    "BUCKETS",
    "METRICS",
    "TTL_S",
    "Histogram",
    "LatencyHistograms",
    "LatencyRecorder",
]

# What is observed (seconds): submission/enqueue to start; one job (a turn's segment);
# one model call (LLMCallEndEvent.execution_time).
METRICS = ("dispatch", "turn", "model_call")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
TTL_S = 7 * 86_400


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


_BOUNDS = (*BUCKETS, math.inf)
_LABELS = tuple(_le(b) for b in _BOUNDS)


@dataclass
class Histogram:
    """One metric's totals: cumulative (le, count) pairs ending with +Inf, sum, count."""

    buckets: list[tuple[str, int]]
    sum: float = 0.0
    count: int = 0


@dataclass
class LatencyRecorder:
    """A worker's observations since its last flush (plain counters; no I/O)."""

    pending: dict[str, float] = field(default_factory=dict)

    def observe(self, metric: str, seconds: float) -> None:
        if metric not in METRICS or not math.isfinite(seconds) or seconds < 0:
            return
        label = _LABELS[bisect.bisect_left(BUCKETS, seconds)]
        for name, amount in ((f"{metric}:{label}", 1.0), (f"{metric}:sum", seconds)):
            self.pending[name] = self.pending.get(name, 0.0) + amount

    def take(self) -> dict[str, float]:
        """What to add to Redis now (and forget here)."""
        taken, self.pending = self.pending, {}
        return taken

    def give_back(self, taken: Mapping[str, float]) -> None:
        """A flush failed: keep its counts for the next one."""
        for name, amount in taken.items():
            self.pending[name] = self.pending.get(name, 0.0) + amount


class LatencyHistograms:
    """The shared hash: workers `add` to it, /metrics `read`s it."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._key = keys.latencies()

    async def add(self, counts: Mapping[str, float]) -> None:
        if not counts:
            return
        async with translate_errors("add latencies"):
            pipe = self._redis.pipeline(transaction=True)
            for name, amount in counts.items():
                if name.endswith(":sum"):
                    pipe.hincrbyfloat(self._key, name, amount)
                else:
                    pipe.hincrby(self._key, name, round(amount))
            pipe.expire(self._key, TTL_S)
            await pipe.execute()

    async def read(self) -> dict[str, Histogram]:
        """Every metric's histogram (all zero before any observation). Fields that are not
        ours, or not numbers, are skipped: Redis contents are untrusted input."""
        async with translate_errors("read latencies"):
            raw: dict[Any, Any] = await resolve(self._redis.hgetall(self._key))
        values: dict[str, float] = {}
        for name, value in raw.items():
            try:
                number = float(text(value))
            except (PayloadError, ValueError):
                continue
            if math.isfinite(number):
                values[text(name)] = number
        return {metric: _histogram(metric, values) for metric in METRICS}


def _histogram(metric: str, values: Mapping[str, float]) -> Histogram:
    running = 0
    buckets = []
    for label in _LABELS:
        running += max(0, int(values.get(f"{metric}:{label}", 0)))
        buckets.append((label, running))
    return Histogram(buckets=buckets, sum=values.get(f"{metric}:sum", 0.0), count=running)
