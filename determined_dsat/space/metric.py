"""The searcher metric and its direction: the one place that knows which way is better."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping


class Metric(enum.Enum):
    """Metrics DeepSpeed's autotuning hooks write to ``autotuning_metric.json``.

    Units: ``throughput`` in samples/s, ``FLOPS_per_gpu`` in FLOP/s, ``forward``,
    ``backward`` and ``latency`` in seconds (per step).
    """

    FLOPS_PER_GPU = "FLOPS_per_gpu"
    THROUGHPUT = "throughput"
    FORWARD = "forward"
    BACKWARD = "backward"
    LATENCY = "latency"

    @property
    def smaller_is_better(self) -> bool:
        return self in (Metric.FORWARD, Metric.BACKWARD, Metric.LATENCY)

    def score(self, value: float) -> float:
        """Map a raw metric value to a score where larger is always better."""
        return -value if self.smaller_is_better else value

    def speedup(self, value: float, reference: float) -> float:
        """How many times better ``value`` is than ``reference`` (``reference / value`` when
        smaller is better); ``inf`` when the denominator is not positive."""
        num, den = (reference, value) if self.smaller_is_better else (value, reference)
        return num / den if den > 0 else float("inf")

    def score_of(self, metrics: Mapping[str, object]) -> float | None:
        """The score of a metrics dict, or None when the metric is absent or not finite."""
        raw = metrics.get(self.value)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            return None
        value = float(raw)
        if not math.isfinite(value):
            return None
        return self.score(value)

    @classmethod
    def parse(cls, name: str) -> Metric:
        """Parse a metric name as the CLI takes it; raises ``ValueError`` naming the choices."""
        for metric in cls:
            if metric.value == name:
                return metric
        choices = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown metric {name!r}; choose one of: {choices}")


def smaller_is_better(metric: str) -> bool:
    """Whether a smaller value of the named metric is better (mirrors the upstream helper)."""
    return Metric.parse(metric).smaller_is_better
