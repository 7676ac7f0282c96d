"""What a measurement produces, and the summary statistics of a sample.

Every number the benchmark reports is a ``Metric``: one headline value (the median for
latencies, the rate for throughputs), the spread behind it, and the target it is judged
against. Targets are only reported, never enforced: a slow number is information.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted, non-empty list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {
        "min": s[0],
        "median": percentile(s, 50),
        "p90": percentile(s, 90),
        "p99": percentile(s, 99),
        "max": s[-1],
    }


@dataclass(frozen=True)
class Target:
    op: Literal["<", "<=", ">", ">="]
    limit: float

    def met(self, value: float) -> bool:
        if self.op == ">=":
            return value >= self.limit
        if self.op == "<=":
            return value <= self.limit
        return value < self.limit if self.op == "<" else value > self.limit

    def __str__(self) -> str:
        return f"{self.op} {self.limit:,g}"


@dataclass
class Metric:
    section: str
    name: str
    unit: str
    value: float
    n: int = 1
    stats: dict[str, float] = field(default_factory=dict)
    target: Target | None = None
    detail: bool = False  # printed indented under the metric before it

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.value)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["target"] = None if self.target is None else str(self.target)
        out["met"] = self.met
        return out


def latency_metric(
    section: str, name: str, samples_ms: list[float], target: Target | None = None, *, detail: bool = False
) -> Metric:
    """A latency sample: headline is the median, spread is min/p90/p99/max."""
    stats = summarize(samples_ms)
    return Metric(section, name, "ms", stats["median"], len(samples_ms), stats, target, detail)


@dataclass
class Section:
    """One numbered item of the brief: its metrics plus free-form notes and data."""

    key: str
    title: str
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    other_cpu_share: float | None = None  # CPU other processes used meanwhile, in cores

    def add(self, metric: Metric) -> Metric:
        self.metrics.append(metric)
        return metric

    def note(self, text: str) -> None:
        self.notes.append(text)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "metrics": [m.to_json() for m in self.metrics],
            "notes": self.notes,
            "extra": self.extra,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "other_cpu_share": None if self.other_cpu_share is None else round(self.other_cpu_share, 3),
        }
