"""`/metrics` in the Prometheus text exposition format (version 0.0.4).

Written by hand rather than with prometheus_client: every figure is read from Redis at
scrape time (queue, run indexes, recent run records), so there is no process-local
counter to keep, and prometheus_client's default registry is module-global state that a
second app in the same process would share. A dozen lines of text formatting is all the
exposition needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from orchestrator.llm.benched import BenchedKeyReport
from orchestrator.runs import RunRecord

__all__ = ["CONTENT_TYPE", "MetricsSnapshot", "quantile", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUANTILES = (0.5, 0.9, 0.99)
TOKEN_KINDS = ("prompt_tokens", "completion_tokens", "total_tokens")


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
        )


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank); NaN for no values, as Prometheus expects."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[min(rank, len(ordered) - 1)]


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


def _label(value: object) -> str:
    """A label value escaped as the exposition format wants (backslash, quote, newline)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _benched_key_samples(snapshot: MetricsSnapshot) -> list[str]:
    name = "orchestrator_api_key_retry_seconds"
    return [
        f'{name}{{worker="{_label(worker)}",model="{_label(key.model)}",'
        f'key="{key.key_index}",keys="{key.keys}",status="{key.status}"}} '
        f"{_number(round(key.retry_in_s, 3))}"
        for worker, key in snapshot.benched_keys
    ]


def render(snapshot: MetricsSnapshot) -> str:
    """The exposition text for one snapshot."""
    lat = snapshot.dispatch_latencies_s
    lines = [
        *_family(
            "orchestrator_queue_depth",
            "gauge",
            "Run attempts waiting in the queue.",
            [f"orchestrator_queue_depth {snapshot.queue_depth}"],
        ),
        *_family(
            "orchestrator_runs",
            "gauge",
            "Retained runs by status.",
            [
                f'orchestrator_runs{{status="{status}"}} {count}'
                for status, count in sorted(snapshot.runs_by_status.items())
            ],
        ),
        *_family(
            "orchestrator_workers",
            "gauge",
            "Workers with a live heartbeat.",
            [f"orchestrator_workers {snapshot.live_workers}"],
        ),
        *_family(
            "orchestrator_dispatch_latency_seconds",
            "summary",
            "Time from submission to start, over the most recent runs.",
            [
                *(
                    f'orchestrator_dispatch_latency_seconds{{quantile="{q}"}} '
                    f"{_number(quantile(lat, q))}"
                    for q in QUANTILES
                ),
                f"orchestrator_dispatch_latency_seconds_sum {_number(sum(lat))}",
                f"orchestrator_dispatch_latency_seconds_count {len(lat)}",
            ],
        ),
        *_family(
            "orchestrator_tokens",
            "gauge",
            "Tokens used by the most recent runs, by kind.",
            [
                f'orchestrator_tokens{{kind="{kind.removesuffix("_tokens")}"}} '
                f"{snapshot.tokens.get(kind, 0)}"
                for kind in TOKEN_KINDS
            ],
        ),
        *_family(
            "orchestrator_metrics_sampled_runs",
            "gauge",
            "How many recent runs the latency and token figures cover.",
            [f"orchestrator_metrics_sampled_runs {snapshot.sampled_runs}"],
        ),
        *_family(
            "orchestrator_api_keys_benched",
            "gauge",
            "API keys resting after a 401/403 answer, over all live workers.",
            [f"orchestrator_api_keys_benched {len(snapshot.benched_keys)}"],
        ),
        *_family(
            "orchestrator_api_key_retry_seconds",
            "gauge",
            "Seconds until a benched API key is tried again, by worker, model and key "
            "(its 1-based place in the model's key pool; never the key).",
            _benched_key_samples(snapshot),
        ),
        *_family(
            "orchestrator_api_open",
            "gauge",
            "1 if the API was started without API keys.",
            [f"orchestrator_api_open {int(snapshot.open_api)}"],
        ),
    ]
    return "\n".join(lines) + "\n"
