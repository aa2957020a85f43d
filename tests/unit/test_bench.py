"""Smoke tests of `orchestrator bench`'s helpers: statistics, formatting, the scripts, the
table; and the quick fork section run for real (real Redis and worker processes, ~10 s).
The whole bench (`orchestrator bench --quick`) is run by hand."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import redis
from rich.console import Console

from orchestrator.bench import run_bench
from orchestrator.bench.core import Plan, bench_script, split_batches
from orchestrator.bench.forks import (
    ROOT_MESSAGE,
    BaselineSample,
    ForkPlan,
    ForkSample,
    Usage,
    fork_rows,
    fork_script,
    peak_overlap,
)
from orchestrator.bench.report import Row, Summary, format_ratio, format_value, percentile, render
from orchestrator.cli.embedded import choose_redis
from orchestrator.keys import Keys
from orchestrator.mock_llm.request import parse_chat_request
from orchestrator.mock_llm.script import parse_script
from orchestrator.mock_llm.state import ScriptState
from orchestrator.runtime.forks import fork_user_message


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


# -- section 6: forks ------------------------------------------------------------------------


def _rule_for(state: ScriptState, messages: list[dict[str, Any]]) -> tuple[str | None, Any]:
    body = json.dumps({"model": "scripted", "stream": True, "messages": messages}).encode()
    decision = state.decide(parse_chat_request(body))
    return decision.rule_name, decision


def test_fork_script_tells_forks_from_their_root() -> None:
    """The root's first call fans out N, a fork (whose context holds the root's message)
    answers after the fork latency, the root's call after the gather sums up."""
    plan = ForkPlan.full()
    state = ScriptState(parse_script(fork_script(plan)))
    system = {"role": "system", "content": "You are the benchmark agent."}
    root = {"role": "user", "content": f"{ROOT_MESSAGE} 1000"}

    name, decision = _rule_for(state, [system, root])
    assert name == "fan-out"
    assert decision.latency.first_token_ms == 0
    (call,) = decision.reply.tool_calls
    assert call.name == "bench_fan_out"

    fork = fork_user_message("bench-leaf 7", fork_id="fork_8", depth=1)
    name, decision = _rule_for(state, [system, root, fork])
    assert name == "fork-leaf"
    assert decision.latency.first_token_ms == plan.llm_ms
    assert not decision.reply.tool_calls

    asked = {"role": "assistant", "content": "", "tool_calls": [_call("bench_fan_out")]}
    answer = {"role": "tool", "tool_call_id": "c1", "content": '{"gathered": 1000}'}
    name, _ = _rule_for(state, [system, root, asked, answer])
    assert name == "fan-in"


def _call(name: str) -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": "{}"}}


def test_fork_plans_raise_the_fork_limit_question_and_stay_small_when_quick() -> None:
    full, quick = ForkPlan.full(), ForkPlan.quick()
    assert (full.forks, full.llm_ms, full.workers) == (1000, 50, (1, 2))
    assert quick.forks == 50
    assert full.ideal_s(1) == pytest.approx(1000 * 0.05 / full.concurrency)
    assert full.ideal_s(2) == pytest.approx(full.ideal_s(1) / 2)


def test_peak_overlap_counts_forks_running_at_once() -> None:
    assert peak_overlap([]) == 0
    assert peak_overlap([(0.0, 1.0), (0.5, 2.0), (1.5, 3.0)]) == 2
    assert peak_overlap([(0.0, 1.0), (1.0, 2.0)]) == 1  # an end frees the slot first
    assert peak_overlap([(0.0, None), (0.0, 1.0)]) == 1  # unfinished: left out


def test_fork_rows_put_ours_beside_the_arq_baseline() -> None:
    plan = ForkPlan.quick()
    usage = Usage(workers=1.0, llm=0.1, redis=0.2, commands=10_000.0, bench=0.1)
    ours = [ForkSample(2.0, 1.5, 1.6, 1.9, 0.1, 2, 0.5, 9, 600, usage) for _ in range(3)]
    base = [BaselineSample(0.5, Usage(0.05, None, 0.01, 1250.0, 0.0))]
    rows = {row.key: row for row in fork_rows(plan, 2, ours, base)}
    assert rows["forks.w2.wall"].ours == 2.0
    assert rows["forks.w2.wall"].ratio == pytest.approx(4.0)
    assert rows["forks.w2.rate"].ours == pytest.approx(plan.forks / 2.0)
    assert rows["forks.w2.rate"].ratio == pytest.approx(0.25)
    assert rows["forks.w2.cpu_workers"].ours == pytest.approx(1000.0 / plan.forks)
    assert rows["forks.w2.redis_commands"].baseline == pytest.approx(1250.0 / plan.forks)
    assert rows["forks.w2.llm_busy"].ours == pytest.approx(5.0)
    assert rows["forks.w2.ideal"].baseline is None
    assert rows["forks.w2.peak_running"].ours == 9


def _figure(figures: dict[str, Any], key: str) -> float:
    value = figures[key]["ours"]
    assert isinstance(value, float | int), key
    return float(value)


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_quick_fork_section_measures_1_and_2_workers_and_cleans_up(
    redis_url: str, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    """`orchestrator bench --quick --only forks` against the real Redis: worker, arq and
    scripted-model processes started and stopped, sane figures, no key left behind."""
    code = run_bench(redis_url, quick=True, only="forks", prefix=keys.prefix)
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["sections"] == ["forks"]
    figures = summary["figures"]
    plan = ForkPlan.quick()
    for workers in plan.workers:
        key = f"forks.w{workers}"
        wall = figures[f"{key}.wall"]
        assert wall["ours"] > 0
        assert wall["baseline"] > 0
        assert wall["ratio"] > 0
        assert wall["n"] == plan.forks
        rate = figures[f"{key}.rate"]
        assert rate["ours"] * wall["ours"] == pytest.approx(plan.forks, rel=0.01)
        assert rate["baseline"] > 0
        started = _figure(figures, f"{key}.last_started")
        ended = _figure(figures, f"{key}.last_ended")
        assert 0 < started <= ended <= wall["ours"] + 0.05
        assert _figure(figures, f"{key}.spawn") > 0
        assert _figure(figures, f"{key}.resume") >= 0
        assert 1 <= _figure(figures, f"{key}.peak_running") <= workers * plan.concurrency
        assert _figure(figures, f"{key}.ideal") == pytest.approx(plan.ideal_s(workers), abs=1e-3)
    assert "submit→root result" in out  # the table
    assert "bench_forker" in out  # its legend
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(match=f"{keys.prefix}*", count=1000)) == []
    finally:
        client.close()
