"""The bench's figures: statistics, one printed row per figure, the table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["RATIO_NOTE", "Row", "Summary", "format_ratio", "format_value", "percentile", "render"]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolating linearly between closest ranks
    (numpy's default method)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    p50: float
    p99: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            raise ValueError("summary of no values")
        return cls(
            n=len(values),
            mean=sum(values) / len(values),
            p50=percentile(values, 50),
            p99=percentile(values, 99),
            maximum=max(values),
        )


@dataclass(frozen=True)
class Row:
    """One printed figure. Latencies are in ms, throughput in events/s."""

    group: str
    key: str
    metric: str
    ours: float
    baseline: float | None
    unit: str
    n: int | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.ours / self.baseline

    def as_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "ours": round(self.ours, 3),
            "baseline": None if self.baseline is None else round(self.baseline, 3),
            "ratio": None if ratio is None else round(ratio, 4),
            "unit": self.unit,
            "n": self.n,
        }


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ev/s":
        return f"{value:,.0f} ev/s"
    if abs(value) >= 100:
        return f"{value:.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


def format_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "n/a"
    return f"{ratio:.3f}x" if ratio < 0.1 else f"{ratio:.2f}x"


RATIO_NOTE = "ratio = ours / baseline (latency: lower is better; events/s: higher is better)."


def render(
    console: Console, rows: Sequence[Row], title: str, legend: Sequence[str] = (RATIO_NOTE,)
) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("ours", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("n", justify="right")
    group = None
    for row in rows:
        if group is not None and row.group != group:
            table.add_section()
        group = row.group
        table.add_row(
            row.metric,
            format_value(row.ours, row.unit),
            format_value(row.baseline, row.unit),
            format_ratio(row.ratio),
            "" if row.n is None else str(row.n),
        )
    console.print(table)
    for line in legend:
        console.print(line, highlight=False)
