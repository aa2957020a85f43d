"""`/metrics`: Prometheus metrics, with prometheus-client's registry, collectors and
metric families (`orchestrator.api.prometheus`; prometheus-client is the `metrics`
extra: without it the API serves everything but /metrics, which says what to install).

Each app has its own `CollectorRegistry` (`MetricsRegistry`), never prometheus-client's
module-global default one, so two apps in one process (tests, an embedding application)
never share or double-register metrics. It holds:

- `ProcessCollector`: the API process's own CPU, memory and file descriptors;
- `SnapshotCollector`: the deployment, read from Redis at scrape time. Collectors are
  synchronous and Redis is read asynchronously, so the route first reads a
  `MetricsSnapshot` (queue, run indexes, recent runs, worker heartbeats, the shared
  latency histograms), then the collector turns it into metric families. There is no
  process-local counter: every API replica serves the same figures.

Per worker (from its heartbeat): busy and total slots, benched API keys, draining. The
latency histograms (dispatch, turn, model call) are observed on the workers and added
to one Redis hash (`orchestrator.store.latency`), so they survive workers coming and
going.

The text is written by `exposition()` from the registry's families rather than by
prometheus-client's `generate_latest`, which writes `4` as `4.0` and sorts labels: the
series and values scrapers, the dashboard and the tests already read stay byte for byte
as they were (same exposition format, version 0.0.4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.api.snapshot import TOKEN_KINDS, MetricsSnapshot, WorkerGauges, quantile
from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.api.prometheus import MetricsRegistry

__all__ = [
    "CONTENT_TYPE",
    "TOKEN_KINDS",
    "MetricsSnapshot",
    "WorkerGauges",
    "new_registry",
    "quantile",
    "render",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def new_registry(*, process: bool = True) -> MetricsRegistry:
    """A registry of this app's own (ConfigError naming the extra without it)."""
    try:
        # Imported here: prometheus-client is the metrics extra, not needed to serve runs.
        from orchestrator.api.prometheus import MetricsRegistry
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "/metrics needs prometheus-client: pip install 'orchestrator[metrics]'"
        ) from exc
    return MetricsRegistry(process=process)


def render(snapshot: MetricsSnapshot) -> str:
    """The exposition text of one snapshot alone (no process metrics)."""
    return new_registry(process=False).render(snapshot)
