"""/metrics with prometheus-client: a registry per app, per-worker gauges, and latency
histograms that workers add to one Redis hash."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.api.metrics import MetricsSnapshot, WorkerGauges, new_registry, render
from orchestrator.keys import Keys
from orchestrator.store.latency import LatencyHistograms, LatencyRecorder


def _snapshot(**extra: Any) -> MetricsSnapshot:
    return MetricsSnapshot.from_runs(
        [], queue_depth=3, runs_by_status={}, live_workers=1, open_api=False, **extra
    )


def test_each_app_has_its_own_registry_and_none_touches_the_global_one() -> None:
    before = {m.name for m in REGISTRY.collect()}
    first, second = new_registry(), new_registry()
    assert first.registry is not second.registry
    text = first.render(_snapshot())
    assert "orchestrator_queue_depth 3" in text
    assert "process_resident_memory_bytes" in text  # the API process's own figures
    assert {m.name for m in REGISTRY.collect()} == before


def test_the_exposition_parses_as_prometheus_text_with_per_worker_gauges() -> None:
    beat = {"worker_id": "pod-a:7:abc", "host": "pod-a", "running": 4, "concurrency": 10}
    text = render(_snapshot(workers=[WorkerGauges.from_heartbeat(beat, benched_keys=2)]))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    busy = families["orchestrator_worker_busy_slots"].samples[0]
    assert (busy.labels, busy.value) == ({"worker": "pod-a:7:abc"}, 4)
    assert families["orchestrator_worker_slots"].samples[0].value == 10
    assert families["orchestrator_worker_benched_keys"].samples[0].value == 2
    assert families["orchestrator_worker_draining"].samples[0].value == 0


def test_a_heartbeat_with_garbage_numbers_gives_zero_not_an_error() -> None:
    gauges = WorkerGauges.from_heartbeat({"worker_id": "w", "running": "lots", "draining": 1})
    assert (gauges.busy_slots, gauges.slots, gauges.draining) == (0, 0, False)


async def test_worker_observations_add_up_across_workers_into_one_histogram(
    fake_redis: Any,
) -> None:
    keys = Keys("metrics-test")
    shared = LatencyHistograms(fake_redis, keys)
    one, two = LatencyRecorder(), LatencyRecorder()
    for seconds in (0.003, 0.2, 0.2):
        one.observe("turn", seconds)
    two.observe("turn", 400.0)  # past the last bound: only +Inf counts it
    two.observe("model_call", 0.02)
    two.observe("turn", float("nan"))  # ignored, as is an unknown metric
    two.observe("nonsense", 1.0)
    await shared.add(one.take())
    await shared.add(two.take())
    assert one.take() == {}
    await fake_redis.hset(keys.latencies(), "turn:0.5", b"not a number")  # untrusted
    histograms = await shared.read()
    turn = histograms["turn"]
    cumulative = dict(turn.buckets)
    assert cumulative["0.005"] == 1
    assert cumulative["0.25"] == 3
    assert cumulative["300.0"] == 3
    assert cumulative["+Inf"] == turn.count == 4
    assert abs(turn.sum - 400.403) < 1e-9
    assert histograms["model_call"].count == 1
    assert histograms["dispatch"].count == 0
    assert 0 < await fake_redis.ttl(keys.latencies()) <= 7 * 86_400

    text = render(_snapshot(histograms=histograms))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, s.labels.get("le")): s.value for s in families["orchestrator_turn_seconds"].samples
    }
    assert samples[("orchestrator_turn_seconds_bucket", "+Inf")] == 4
    assert samples[("orchestrator_turn_seconds_count", None)] == 4


def test_a_failed_flush_keeps_its_observations_for_the_next() -> None:
    recorder = LatencyRecorder()
    recorder.observe("dispatch", 0.01)
    taken = recorder.take()
    recorder.observe("dispatch", 0.01)
    recorder.give_back(taken)
    assert recorder.take() == {"dispatch:0.01": 2.0, "dispatch:sum": 0.02}
