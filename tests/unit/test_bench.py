"""Smoke tests of `orchestrator bench`'s helpers: statistics, formatting, the script, the
table. The bench itself (`orchestrator bench --quick`, ~30 s) is run by hand."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from orchestrator.bench import (
    Plan,
    Row,
    Summary,
    bench_script,
    choose_redis,
    format_ratio,
    format_value,
    percentile,
    render,
    split_batches,
)
from orchestrator.mock_llm.script import parse_script


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    hundred = [float(i) for i in range(1, 101)]
    assert percentile(hundred, 99) == pytest.approx(99.01)
    assert percentile(hundred, 50) == pytest.approx(50.5)
    assert percentile([7.0], 99) == 7.0


def test_percentile_rejects_nothing_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


def test_summary() -> None:
    summary = Summary.of([0.010, 0.020, 0.030, 0.040, 1.0])
    assert summary.n == 5
    assert summary.mean == pytest.approx(0.22)
    assert summary.p50 == pytest.approx(0.030)
    assert summary.maximum == 1.0
    assert summary.p99 == pytest.approx(0.04 + 0.96 * 0.96)


def test_row_ratio_and_json() -> None:
    row = Row("g", "dispatch.noop.p50", "enqueue→start p50", 2.5, 250.0, "ms", 50)
    assert row.ratio == pytest.approx(0.01)
    assert row.as_json() == {
        "ours": 2.5,
        "baseline": 250.0,
        "ratio": 0.01,
        "unit": "ms",
        "n": 50,
    }
    lone = Row("g", "abort.status.p50", "abort", 40.0, None, "ms", 10)
    assert lone.ratio is None
    assert lone.as_json()["baseline"] is None


def test_formatting() -> None:
    assert format_value(None, "ms") == "n/a"
    assert format_value(3.456, "ms") == "3.46 ms"
    assert format_value(45.67, "ms") == "45.7 ms"
    assert format_value(250.4, "ms") == "250 ms"
    assert format_value(123456.7, "ev/s") == "123,457 ev/s"
    assert format_ratio(None) == "n/a"
    assert format_ratio(0.0123) == "0.012x"
    assert format_ratio(2.5) == "2.50x"


@pytest.mark.parametrize(("n", "batches"), [(10, 3), (10, 1), (3, 10), (20_000, 7), (1, 1)])
def test_split_batches_keeps_order_and_sizes_even(n: int, batches: int) -> None:
    items = [str(i).encode() for i in range(n)]
    parts = split_batches(items, batches)
    assert [x for part in parts for x in part] == items
    assert len(parts) == min(batches, n)
    sizes = [len(part) for part in parts]
    assert min(sizes) >= 1
    assert max(sizes) - min(sizes) <= 1


def test_plans() -> None:
    full, quick = Plan.full(), Plan.quick()
    assert full.dispatch_n == 50
    assert full.throughput_n == 20_000
    assert full.abort_n == 10
    assert quick.dispatch_n == 15
    assert quick.throughput_n == 5_000
    assert quick.abort_n == 4


def test_bench_script_is_a_valid_script_with_zero_latency_by_default() -> None:
    plan = Plan.quick()
    script = parse_script(bench_script(plan))
    assert script.latency is not None
    assert script.latency.first_token_ms == 0
    assert script.latency.token_ms == 0
    by_name = {rule.name: rule for rule in script.rules}
    assert set(by_name) == {"stream", "long"}
    assert by_name["stream"].reply.content is not None
    assert len(by_name["stream"].reply.content.split()) == plan.stream_words
    json.dumps(bench_script(plan))  # the bench writes it to a file


def test_render_prints_every_row_and_the_legend() -> None:
    out = io.StringIO()
    rows = [
        Row("1 dispatch", "dispatch.noop.p50", "enqueue→start p50", 3.0, 300.0, "ms", 50),
        Row("5 abort", "abort.status.p50", "abort→status seen p50", 35.0, None, "ms", 10),
    ]
    render(Console(file=out, width=140), rows, "bench")
    text = out.getvalue()
    assert "enqueue→start p50" in text
    assert "300 ms" in text
    assert "0.010x" in text
    assert "n/a" in text
    assert "ratio = ours / baseline" in text


def test_choose_redis_uses_the_given_url_without_connecting() -> None:
    with choose_redis("redis://example.invalid:1/0") as (url, label):
        assert url == "redis://example.invalid:1/0"
        assert "given" in label
