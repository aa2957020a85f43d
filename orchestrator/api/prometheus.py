"""The prometheus-client side of /metrics: collectors, a registry per app, the text.

Imported only when /metrics is served (`orchestrator.api.metrics`): prometheus-client
is the `metrics` extra.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import ProcessCollector
from prometheus_client.core import (
    CollectorRegistry,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from orchestrator.api.snapshot import TOKEN_KINDS, MetricsSnapshot, WorkerGauges, quantile
from orchestrator.store.latency import Histogram

__all__ = ["HISTOGRAMS", "QUANTILES", "MetricsRegistry", "SnapshotCollector", "exposition"]

QUANTILES = (0.5, 0.9, 0.99)
# store.latency's metric -> (series name, help)
HISTOGRAMS = {
    "dispatch": (
        "orchestrator_dispatch_seconds",
        "Time from a job's enqueue to its start on a worker (runs, forks, resumed segments).",
    ),
    "turn": ("orchestrator_turn_seconds", "Time one job of a turn ran on a worker."),
    "model_call": ("orchestrator_model_call_seconds", "Time one model call took."),
}


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _labelled(
    name: str, help_text: str, labels: Sequence[str], rows: Iterable[tuple[Sequence[str], float]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=labels)
    for values, value in rows:
        family.add_metric(values, value)
    return family


def _dispatch_summary(latencies: Sequence[float]) -> Metric:
    name = "orchestrator_dispatch_latency_seconds"
    family = Metric(name, "Time from submission to start, over the most recent runs.", "summary")
    for q in QUANTILES:
        family.add_sample(name, {"quantile": str(q)}, quantile(latencies, q))
    family.add_sample(f"{name}_sum", {}, sum(latencies))
    family.add_sample(f"{name}_count", {}, len(latencies))
    return family


def _benched_families(snapshot: MetricsSnapshot) -> list[Metric]:
    return [
        _gauge(
            "orchestrator_api_keys_benched",
            "API keys resting after a 401/403 answer, over all live workers.",
            len(snapshot.benched_keys),
        ),
        _labelled(
            "orchestrator_api_key_retry_seconds",
            "Seconds until a benched API key is tried again, by worker, model and key "
            "(its 1-based place in the model's key pool; never the key).",
            ["worker", "model", "key", "keys", "status"],
            (
                (
                    [worker, key.model, str(key.key_index), str(key.keys), str(key.status)],
                    round(key.retry_in_s, 3),
                )
                for worker, key in snapshot.benched_keys
            ),
        ),
    ]


def _worker_families(workers: Sequence[WorkerGauges]) -> list[Metric]:
    per_worker = [
        ("orchestrator_worker_busy_slots", "Turns running on a worker now.", "busy_slots"),
        ("orchestrator_worker_slots", "Turns a worker runs at once (its concurrency).", "slots"),
        (
            "orchestrator_worker_benched_keys",
            "API keys a worker has benched after a 401/403.",
            "benched_keys",
        ),
        ("orchestrator_worker_draining", "1 if a worker takes no more jobs.", "draining"),
    ]
    return [
        _labelled(
            name,
            help_text,
            ["worker"],  # the worker id starts with its host name
            (([w.worker_id], float(getattr(w, attribute))) for w in workers),
        )
        for name, help_text, attribute in per_worker
    ]


def _histogram_families(histograms: Mapping[str, Histogram]) -> list[Metric]:
    families: list[Metric] = []
    for metric, (name, help_text) in HISTOGRAMS.items():
        histogram = histograms.get(metric)
        if histogram is None:
            continue
        families.append(
            HistogramMetricFamily(
                name,
                help_text,
                buckets=[(le, float(count)) for le, count in histogram.buckets],
                sum_value=histogram.sum,
            )
        )
    return families


class SnapshotCollector:
    """A prometheus-client collector over the latest `MetricsSnapshot` (set by the route
    just before the registry is collected)."""

    def __init__(self) -> None:
        self.snapshot: MetricsSnapshot | None = None

    def collect(self) -> Iterable[Metric]:
        snapshot = self.snapshot
        if snapshot is None:
            return []
        return [
            _gauge(
                "orchestrator_queue_depth",
                "Run attempts waiting in the queue for a worker (running ones not counted).",
                snapshot.queue_depth,
            ),
            _labelled(
                "orchestrator_runs",
                "Retained runs by status.",
                ["status"],
                (([status], count) for status, count in sorted(snapshot.runs_by_status.items())),
            ),
            _gauge("orchestrator_workers", "Workers with a live heartbeat.", snapshot.live_workers),
            _dispatch_summary(snapshot.dispatch_latencies_s),
            _labelled(
                "orchestrator_tokens",
                "Tokens used by the most recent runs, by kind.",
                ["kind"],
                (
                    ([kind.removesuffix("_tokens")], snapshot.tokens.get(kind, 0))
                    for kind in TOKEN_KINDS
                ),
            ),
            _gauge(
                "orchestrator_metrics_sampled_runs",
                "How many recent runs the latency and token figures cover.",
                snapshot.sampled_runs,
            ),
            *_benched_families(snapshot),
            _gauge(
                "orchestrator_api_open",
                "1 if the API was started without API keys.",
                int(snapshot.open_api),
            ),
            *_worker_families(snapshot.workers),
            *_histogram_families(snapshot.histograms),
        ]


class MetricsRegistry:
    """One app's registry: the process collector and the snapshot collector."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        if process:
            ProcessCollector(registry=self.registry)
        self.snapshot = SnapshotCollector()
        self.registry.register(self.snapshot)

    def render(self, snapshot: MetricsSnapshot) -> str:
        """The exposition text with `snapshot` as the deployment's figures."""
        self.snapshot.snapshot = snapshot
        try:
            return exposition(self.registry)
        finally:
            self.snapshot.snapshot = None


# -- the text format ----------------------------------------------------------------------

_TYPES = {"counter": "counter", "gauge": "gauge", "summary": "summary", "histogram": "histogram"}


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    if abs(value) < 1e-4:  # no exponent: 0.000012, not 1.2e-05
        return f"{value:.12f}".rstrip("0")
    return repr(float(value))


def _label(value: object) -> str:
    """A label value escaped as the exposition format wants (backslash, quote, newline)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def exposition(registry: CollectorRegistry) -> str:
    """The Prometheus text format (0.0.4) of every family in `registry`: labels in the
    order the family gives them, whole numbers without a decimal point."""
    lines: list[str] = []
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        lines.append(f"# HELP {name} {_help(family.documentation)}")
        lines.append(f"# TYPE {name} {_TYPES.get(family.type, 'untyped')}")
        for sample in family.samples:
            labels = ",".join(f'{k}="{_label(v)}"' for k, v in sample.labels.items())
            series = f"{sample.name}{{{labels}}}" if labels else sample.name
            lines.append(f"{series} {_number(sample.value)}")
    return "\n".join(lines) + "\n"
