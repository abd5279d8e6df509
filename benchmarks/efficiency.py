"""The search-efficiency benchmark's work: every entry on one landscape, in one process.

An *entry* is (implementation, method): ours (set up as the ``dsat`` CLI does), upstream's
(``determined.pytorch.dsat``, determined 0.37.0, as their CLI does) or DeepSpeed's own
autotuner (0.19.8, ``native.py``). A :class:`Plan` names one landscape of a family (and
a sweep), the entries, the concurrencies and the seeds; :func:`run_plan` runs them all and
returns the landscape's :class:`LandscapeInfo` and the :class:`~benchmarks.runs.Run` of
every search. Plans and their results cross process boundaries as JSON
(:func:`run_plan_json`), so the benchmarks can spread landscapes over worker processes.

A landscape's optimum is the largest noise-free throughput over stages 1-3 of our knob
table, upstream's and DeepSpeed's autotuner's (``BenchmarkLandscape.optimum``), and the
user's own ds_config (the baseline trial runs it, and a search may recommend it).
"""

from __future__ import annotations

import functools
import json
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from benchmarks import native
from benchmarks.families.api import BenchmarkLandscape, KnobTables
from benchmarks.families.catalog import family
from benchmarks.harness import (
    ALL_STAGES,
    BASE_DS_CONFIG,
    METHODS,
    OUR_TABLE,
    ModelDir,
    build_ours,
    drive,
    ds_config_of,
    our_executor,
    quiet,
    write_model_dir,
)
from benchmarks.recording import RecordingExecutor, TrialLog, true_value
from benchmarks.runs import Entry, Run
from benchmarks.upstream import build_upstream, upstream_pick, upstream_table

IMPLEMENTATIONS = ("ours", "upstream", "deepspeed")
OUR_METHODS = (*METHODS, "model")
"""Ours: the three methods upstream has too, and ``model``, which it does not."""
UPSTREAM_METHODS = METHODS
NATIVE_METHODS = ("grid", "random", "model_based")
"""DeepSpeed's tuners (``deepspeed.autotuning.tuner``), driven by ``benchmarks/native.py``."""
FIRST_SEED = 42
_REL_TOL = 1e-9


def entries(native_too: bool, impls: Sequence[str] = IMPLEMENTATIONS) -> list[Entry]:
    """The entries of the given implementations, in report order."""
    out = [("ours", m) for m in OUR_METHODS] if "ours" in impls else []
    out += [("upstream", m) for m in UPSTREAM_METHODS] if "upstream" in impls else []
    if native_too and "deepspeed" in impls:
        out += [("deepspeed", m) for m in NATIVE_METHODS]
    return out


def sweep_label(sweep: Mapping[str, float]) -> str:
    """``"activation_error=0.5"``; empty for the family's own draw."""
    return ",".join(f"{k}={v:g}" for k, v in sorted(sweep.items()))


# ----- the landscape -----


@attrs.frozen
class SpaceOptima:
    """A landscape's best noise-free throughput over each search space's knob table
    (stages 1-3), and the value of the user's own ds_config (samples/s)."""

    ours: float
    upstream: float
    native: float
    baseline: float

    @classmethod
    def of(
        cls, landscape: BenchmarkLandscape, upstream: KnobTables, native_table: KnobTables | None
    ) -> SpaceOptima:
        return cls(
            ours=landscape.optimum(OUR_TABLE, ALL_STAGES),
            upstream=landscape.optimum(upstream, ALL_STAGES),
            native=0.0 if native_table is None else landscape.optimum(native_table, ALL_STAGES),
            baseline=true_value(landscape, BASE_DS_CONFIG),
        )

    @property
    def optimum(self) -> float:
        return max(self.ours, self.upstream, self.native, self.baseline)


@attrs.frozen
class LandscapeInfo:
    """A landscape, its optima and the best any run found (samples/s)."""

    family: str
    key: str
    sweep: str
    slots: int
    facts: Mapping[str, Any]  # the landscape's describe()
    ours_space_optimum: float
    upstream_space_optimum: float
    native_space_optimum: float
    baseline: float
    best_found: float

    @property
    def optimum(self) -> float:
        return max(
            self.ours_space_optimum,
            self.upstream_space_optimum,
            self.native_space_optimum,
            self.baseline,
        )

    @property
    def feasible(self) -> bool:
        return self.optimum > 0.0

    @property
    def above_optimum(self) -> bool:
        """Whether some run found more than the optimum (a harness inconsistency)."""
        return self.best_found > self.optimum * (1.0 + _REL_TOL)

    def to_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "optimum": self.optimum}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LandscapeInfo:
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# ----- one run of one entry -----


def _entries(value: Sequence[Sequence[str]]) -> tuple[Entry, ...]:
    return tuple((str(e[0]), str(e[1])) for e in value)


def _ints(value: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


@attrs.frozen
class Plan:
    """Every entry, concurrency and seed on the ``index``-th of ``count`` landscapes that
    ``family.draw(count, **sweep)`` returns."""

    family: str
    index: int
    count: int
    entries: tuple[Entry, ...] = attrs.field(converter=_entries)
    concurrency: tuple[int, ...] = attrs.field(converter=_ints)
    seeds: tuple[int, ...] = attrs.field(converter=_ints)
    max_trials: int
    sweep: Mapping[str, float] = attrs.field(factory=dict)

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls(**json.loads(text))


@functools.lru_cache(maxsize=8)
def _landscapes(name: str, count: int, sweep: str) -> list[BenchmarkLandscape]:
    values = dict(item.split("=") for item in sweep.split(",") if item)
    activation = values.get("activation_error")
    noise = values.get("noise")
    return family(name).draw(
        count,
        activation_error=None if activation is None else float(activation),
        noise=None if noise is None else float(noise),
    )


@functools.lru_cache(maxsize=1)
def search_tables() -> tuple[KnobTables, KnobTables | None]:
    """Upstream's knob table and DeepSpeed's autotuner's (None where it cannot run here)."""
    why_not = native.available()
    return upstream_table(ALL_STAGES), native.native_table() if why_not is None else None


def run_entry(
    entry: Entry,
    landscape: BenchmarkLandscape,
    model: ModelDir,
    *,
    seed: int,
    concurrency: int,
    max_trials: int,
) -> tuple[tuple[TrialLog, ...], str, dict[str, Any] | None]:
    """One search: its trials, how it ended, and the ds_config it recommends."""
    impl, method = entry
    if impl == "deepspeed":
        result = native.run_native(
            method, landscape, max_trials=max_trials, max_concurrent_trials=concurrency, seed=seed
        )
        return result.trials, result.ended, result.pick
    if impl == "ours":
        ours = build_ours(
            method, model, max_trials=max_trials, max_concurrent_trials=concurrency, seed=seed
        )
        run = drive(ours, our_executor(ours, landscape, seed))
        return run.trials, run.ended, ours.best_ds_config()
    theirs = build_upstream(
        method, model, max_trials=max_trials, max_concurrent_trials=concurrency, seed=seed
    )
    run = drive(theirs, RecordingExecutor(landscape, ds_config_of, seed))
    return run.trials, run.ended, upstream_pick(theirs)


def run_plan(plan: Plan) -> tuple[LandscapeInfo, list[Run]]:
    """Every search of a plan on its landscape."""
    sweep = sweep_label(plan.sweep)
    landscape = _landscapes(plan.family, plan.count, sweep)[plan.index]
    upstream, native_table = search_tables()
    optima = SpaceOptima.of(landscape, upstream, native_table)
    runs: list[Run] = []
    best = 0.0
    with tempfile.TemporaryDirectory(prefix="dsat-bench-") as tmp:
        model = write_model_dir(pathlib.Path(tmp), landscape.slots)
        for concurrency in plan.concurrency:
            for entry in plan.entries:
                for seed in plan.seeds:
                    trials, ended, pick = run_entry(
                        entry,
                        landscape,
                        model,
                        seed=seed,
                        concurrency=concurrency,
                        max_trials=plan.max_trials,
                    )
                    best = max([best, *(t.value for t in trials)])
                    runs.append(
                        Run.of(
                            entry=entry,
                            family=plan.family,
                            landscape=landscape.key,
                            seed=seed,
                            concurrency=concurrency,
                            ended=ended,
                            trials=trials,
                            pick_value=0.0 if pick is None else true_value(landscape, pick),
                            optimum=optima.optimum,
                            sweep=sweep,
                        )
                    )
    info = LandscapeInfo(
        family=plan.family,
        key=landscape.key,
        sweep=sweep,
        slots=landscape.slots,
        facts=dict(landscape.describe()),
        ours_space_optimum=optima.ours,
        upstream_space_optimum=optima.upstream,
        native_space_optimum=optima.native,
        baseline=optima.baseline,
        best_found=best,
    )
    return info, runs


def run_plan_json(text: str) -> str:
    """:func:`run_plan` across a process boundary: a plan's JSON in, results' JSON out."""
    quiet()
    info, runs = run_plan(Plan.from_json(text))
    return json.dumps({"info": info.to_json(), "runs": [r.to_json() for r in runs]})
