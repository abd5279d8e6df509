"""The search-efficiency benchmark's records and statistics (run by ``search_efficiency.py``).

A :class:`Run` is one search of one *entry* (implementation, method): ours, upstream's
(``determined.pytorch.dsat``) or DeepSpeed's own autotuner. :class:`SpaceOptima` is a
landscape's optimum over each search space's knob table, all scored by the landscape's same
effect functions; a :class:`LandscapeInfo` is a landscape with those optima.
:func:`score_run` measures a run against its landscape's optimum, :func:`summarize`
aggregates an entry's runs, :func:`verdicts` and :func:`paired` compare entries, and
:func:`compare_tables` compares our knob table with upstream's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from benchmarks.harness import ALL_STAGES, METHODS, OUR_TABLE, KnobTables, TrialLog
from determined_dsat.testing.synthetic import Landscape

IMPLEMENTATIONS = ("ours", "upstream", "deepspeed")
OUR_METHODS = (*METHODS, "model")
"""Ours: the three methods upstream has too, and ``model``, which it does not."""
UPSTREAM_METHODS = METHODS
NATIVE_METHODS = ("grid", "random", "model_based")
"""DeepSpeed's tuners (``deepspeed.autotuning.tuner``), driven by ``benchmarks/native.py``."""
Entry = tuple[str, str]  # (implementation, method)


def entries(native: bool) -> list[Entry]:
    """Every (implementation, method) the benchmark runs, in report order."""
    out = [("ours", m) for m in OUR_METHODS] + [("upstream", m) for m in UPSTREAM_METHODS]
    return out + [("deepspeed", m) for m in NATIVE_METHODS] if native else out


REACH_LEVELS = (0.95, 0.99)
BEST_AFTER = (16, 32)
DIAGNOSIS_AT = 32
_REL_TOL = 1e-9


@attrs.frozen
class Run:
    """One search of one method on one landscape with one random seed."""

    impl: str
    method: str
    landscape: int
    seed: int
    trials: tuple[TrialLog, ...]
    ended: str

    @property
    def best(self) -> float:
        return max((t.value for t in self.trials), default=0.0)


@attrs.frozen
class LandscapeInfo:
    """A landscape and its optimum over each knob table."""

    seed: int
    slots: int
    gpu_mem_gib: int
    num_params: int
    default_max_mbs: tuple[int, int, int]  # per stage 1/2/3, every knob at DeepSpeed's default
    ours_space_optimum: float
    upstream_space_optimum: float
    best_found: float
    native_space_optimum: float = 0.0

    @property
    def optimum(self) -> float:
        return max(self.ours_space_optimum, self.upstream_space_optimum, self.native_space_optimum)

    @property
    def feasible(self) -> bool:
        return self.optimum > 0.0

    @property
    def above_optimum(self) -> bool:
        """Whether some run found more than the optimum (a harness inconsistency)."""
        return self.best_found > self.optimum * (1.0 + _REL_TOL)

    def to_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "optimum": self.optimum, "feasible": self.feasible}


# ----- comparing the two knob tables -----


@attrs.frozen
class SpaceOptima:
    """A landscape's best noise-free throughput over each search space's configs.

    Each uses ``Landscape.optimum``: every stage, every combination of the table's values
    of the knobs DeepSpeed reads there (the others at DeepSpeed's defaults), each at the
    largest micro-batch that fits it, scored by the same effect functions. ``native`` is
    DeepSpeed's autotuner's space (0 when it was not run).
    """

    ours: float
    upstream: float
    native: float = 0.0

    @classmethod
    def of(
        cls,
        landscape: Landscape,
        upstream: KnobTables,
        stages: Sequence[int] = ALL_STAGES,
        native: KnobTables | None = None,
    ) -> SpaceOptima:
        return cls(
            ours=landscape.optimum(stages, tables=OUR_TABLE),
            upstream=landscape.optimum(stages, tables=upstream),
            native=0.0 if native is None else landscape.optimum(stages, tables=native),
        )

    @property
    def optimum(self) -> float:
        return max(self.ours, self.upstream, self.native)


def config_ceiling(landscape: Landscape, zero: Mapping[str, Any]) -> float:
    """Noise-free throughput of a zero block at the largest micro-batch that fits it."""
    stage = int(zero.get("stage", 0))
    mbs = landscape.true_max_mbs(stage, zero=zero)
    value = landscape.true_throughput(zero, mbs) if mbs >= 1 else None
    return 0.0 if value is None else value


# ----- scoring one run -----


@attrs.frozen
class RunScore:
    """The efficiency numbers of one run against its landscape's optimum."""

    trials_to: dict[float, int]  # per reach level; max_trials + 1 when never reached
    reached: dict[float, bool]
    best_after: dict[int, float]  # fraction of the optimum
    best_final: float
    oom: int
    num_trials: int
    # After DIAGNOSIS_AT trials: the best value the zero blocks that trained could give
    # at their own largest micro-batch (over the optimum), and the best value found over
    # that ceiling.
    configs_ceiling: float
    mbs_search: float


def configs_ceiling(trials: Sequence[TrialLog], landscape: Landscape) -> float:
    """The best value the zero blocks that trained could give at their largest micro-batch."""
    ceilings = {
        repr(sorted(t.zero.items())): t.zero
        for t in trials
        if t.outcome == "ok" and t.zero is not None
    }
    return max((config_ceiling(landscape, zero) for zero in ceilings.values()), default=0.0)


def score_run(run: Run, optimum: float, max_trials: int, landscape: Landscape) -> RunScore:
    values = [t.value for t in run.trials]
    trials_to: dict[float, int] = {}
    reached: dict[float, bool] = {}
    for level in REACH_LEVELS:
        hit = next((i + 1 for i, v in enumerate(values) if v >= level * optimum), None)
        reached[level] = hit is not None
        trials_to[level] = max_trials + 1 if hit is None else hit
    best_after = {k: max(values[:k], default=0.0) / optimum for k in BEST_AFTER}
    ceiling = configs_ceiling(run.trials[:DIAGNOSIS_AT], landscape)
    return RunScore(
        trials_to=trials_to,
        reached=reached,
        best_after=best_after,
        best_final=max(values, default=0.0) / optimum,
        oom=sum(t.outcome == "oom" for t in run.trials),
        num_trials=len(values),
        configs_ceiling=ceiling / optimum,
        mbs_search=best_after[DIAGNOSIS_AT] * optimum / ceiling if ceiling > 0 else 0.0,
    )


# ----- aggregating -----


@attrs.frozen
class Quartiles:
    q25: float
    median: float
    q75: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Quartiles:
        array = np.asarray(values, dtype=float)
        q25, median, q75 = np.percentile(array, [25, 50, 75])
        return cls(float(q25), float(median), float(q75), float(array.mean()))

    def show(self, digits: int = 0, percent: bool = False) -> str:
        scale, unit = (100.0, "%") if percent else (1.0, "")
        q = [f"{v * scale:.{digits}f}" for v in (self.median, self.q25, self.q75)]
        return f"{q[0]}{unit} [{q[1]}–{q[2]}]"


@attrs.frozen
class MethodSummary:
    """The statistics of one method of one implementation over all its scored runs."""

    impl: str
    method: str
    runs: int
    trials_to: dict[float, Quartiles]
    never: dict[float, int]
    best_after: dict[int, Quartiles]
    best_final: Quartiles
    oom_median: float
    oom_mean: float
    configs_ceiling: Quartiles
    mbs_search: Quartiles
    trials_run: Quartiles

    def reach_rate(self, level: float) -> float:
        return 1.0 - self.never[level] / self.runs if self.runs else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "impl": self.impl,
            "method": self.method,
            "runs": self.runs,
            "trials_to": {str(k): attrs.asdict(v) for k, v in self.trials_to.items()},
            "never_reached": {str(k): v for k, v in self.never.items()},
            "reach_rate": {str(k): self.reach_rate(k) for k in self.never},
            "best_after": {str(k): attrs.asdict(v) for k, v in self.best_after.items()},
            "best_final": attrs.asdict(self.best_final),
            "oom_median": self.oom_median,
            "oom_mean": self.oom_mean,
            f"configs_ceiling_at_{DIAGNOSIS_AT}": attrs.asdict(self.configs_ceiling),
            f"mbs_search_at_{DIAGNOSIS_AT}": attrs.asdict(self.mbs_search),
            "trials_run": attrs.asdict(self.trials_run),
        }


def summarize(impl: str, method: str, scores: Sequence[RunScore]) -> MethodSummary:
    ooms = [s.oom for s in scores]
    return MethodSummary(
        impl=impl,
        method=method,
        runs=len(scores),
        trials_to={lv: Quartiles.of([s.trials_to[lv] for s in scores]) for lv in REACH_LEVELS},
        never={lv: sum(not s.reached[lv] for s in scores) for lv in REACH_LEVELS},
        best_after={k: Quartiles.of([s.best_after[k] for s in scores]) for k in BEST_AFTER},
        best_final=Quartiles.of([s.best_final for s in scores]),
        oom_median=float(np.median(ooms)),
        oom_mean=float(np.mean(ooms)),
        configs_ceiling=Quartiles.of([s.configs_ceiling for s in scores]),
        mbs_search=Quartiles.of([s.mbs_search for s in scores]),
        trials_run=Quartiles.of([s.num_trials for s in scores]),
    )


@attrs.frozen
class Verdict:
    """Ours against upstream on one median: which is better."""

    method: str
    measure: str
    ours: float
    upstream: float
    smaller_is_better: bool

    @property
    def outcome(self) -> str:
        if self.ours == self.upstream:
            return "tie"
        better = self.ours < self.upstream if self.smaller_is_better else self.ours > self.upstream
        return "ours better" if better else "UPSTREAM BETTER"


def verdicts(summaries: Mapping[Entry, MethodSummary]) -> list[Verdict]:
    """Ours against upstream, method by method, on every median."""
    out: list[Verdict] = []
    for method in METHODS:
        ours, up = summaries["ours", method], summaries["upstream", method]
        for lv in REACH_LEVELS:
            measure = f"trials to {lv:.0%}"
            out.append(
                Verdict(method, measure, ours.trials_to[lv].median, up.trials_to[lv].median, True)
            )
        for k in BEST_AFTER:
            measure = f"best/optimum after {k}"
            ours_v, up_v = ours.best_after[k].median, up.best_after[k].median
            out.append(Verdict(method, measure, ours_v, up_v, False))
        out.append(Verdict(method, "OOM trials", ours.oom_median, up.oom_median, True))
    return out


@attrs.frozen
class Paired:
    """Per (landscape, seed): how often entry ``a`` beat, tied or lost to entry ``b``."""

    a: Entry
    b: Entry
    measure: str
    better: int
    tie: int
    worse: int

    @property
    def method(self) -> str:
        return self.a[1] if self.a[1] == self.b[1] else f"{self.a[1]} vs {self.b[0]} {self.b[1]}"

    @property
    def sign_test_p(self) -> float:
        """Two-sided sign test of better vs worse (ties dropped)."""
        n, k = self.better + self.worse, min(self.better, self.worse)
        if n == 0:
            return 1.0
        return min(1.0, 2.0 * sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n)


ScoreKey = tuple[str, str, int, int]  # impl, method, landscape, seed

MEASURES: list[tuple[str, Callable[[RunScore], float], bool]] = [
    *((f"trials to {lv:.0%}", lambda s, lv=lv: s.trials_to[lv], True) for lv in REACH_LEVELS),
    *((f"best/optimum after {k}", lambda s, k=k: s.best_after[k], False) for k in BEST_AFTER),
    ("OOM trials", lambda s: s.oom, True),
]
"""Per-run measures: name, how to get it, whether smaller is better."""


def paired(
    scores: dict[ScoreKey, RunScore],
    keys: Iterable[tuple[int, int]],
    comparisons: Sequence[tuple[Entry, Entry]] | None = None,
) -> list[Paired]:
    """Sign counts of ``a`` against ``b`` per (landscape, seed); by default ours against
    upstream for every method both have."""
    pairs = comparisons or [(("ours", m), ("upstream", m)) for m in METHODS]
    keys = list(keys)
    out: list[Paired] = []
    for a, b in pairs:
        for name, get, smaller in MEASURES:
            diffs = [get(scores[(*a, ls, rs)]) - get(scores[(*b, ls, rs)]) for ls, rs in keys]
            signed = [-d if smaller else d for d in diffs]
            out.append(
                Paired(
                    a,
                    b,
                    name,
                    better=sum(d > 1e-12 for d in signed),
                    tie=sum(abs(d) <= 1e-12 for d in signed),
                    worse=sum(d < -1e-12 for d in signed),
                )
            )
    return out
