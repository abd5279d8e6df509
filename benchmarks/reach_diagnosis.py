"""Why a search never ran a configuration within 1 % of the optimum.

Reads a search-efficiency run's ``runs.json`` (or ``runs.json.gz``) and, for one method,
family and each concurrency, sorts the runs that never reached 99 % of the optimum by
what they missed:

- **knobs**: some (stage, micro-batch) the search ran reaches 99 % with other ZeRO knobs
  of the same stage's table (the search stopped before it tried them);
- **micro-batch**: the optimum's stage was tried, but no tried micro-batch of any tried
  stage reaches 99 % with any knobs;
- **stage**: the optimum's stage was never tried.

For the knob misses it also prints, per stage, how much of the optimum each knob alone
costs at its worst value (the optimum's other knobs kept): which knobs the search has to
get right. Noise-free values come from the landscapes themselves.

    python -m benchmarks.reach_diagnosis benchmarks/results/search-efficiency-b6aae12
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from benchmarks.efficiency import _landscapes
from benchmarks.families.api import BenchmarkLandscape
from benchmarks.families.heldout_zero import table_blocks
from benchmarks.harness import ALL_STAGES, OUR_TABLE

LEVEL = 0.99
DEFAULT_LANDSCAPES = 30


def classify(
    best_tried: float, best_with_other_knobs: float, optimum_stage: int, stages: Iterable[int]
) -> str:
    """What a run missed (fractions of the optimum): ``reached``, ``knobs``,
    ``micro-batch`` or ``stage``."""
    if best_tried >= LEVEL:
        return "reached"
    if best_with_other_knobs >= LEVEL:
        return "knobs"
    return "micro-batch" if optimum_stage in set(stages) else "stage"


def value(landscape: BenchmarkLandscape, zero: Mapping[str, Any], mbs: int) -> float:
    """Noise-free samples/s of one configuration at gas 1 (0 when it does not fit)."""
    ds_config = {
        "train_micro_batch_size_per_gpu": mbs,
        "gradient_accumulation_steps": 1,
        "train_batch_size": mbs * landscape.slots,
        "zero_optimization": dict(zero),
    }
    found = landscape.true_throughput(ds_config)
    return 0.0 if found is None else float(found)


def best_over_knobs(landscape: BenchmarkLandscape, stage: int, mbs: int) -> float:
    """The best noise-free samples/s of any block of ``stage``'s knob table at ``mbs``."""
    blocks = table_blocks(stage, OUR_TABLE.get(stage, {})) if stage else [{"stage": 0}]
    return max((value(landscape, block, mbs) for block in blocks), default=0.0)


def optimum(landscape: BenchmarkLandscape) -> Any:
    """The landscape's best point over our table (``stage``, ``mbs``, ``zero``,
    ``throughput``); None when nothing fits. Both families have ``best_config``, outside
    the protocol."""
    return landscape.best_config(OUR_TABLE, ALL_STAGES)  # type: ignore[attr-defined]


def knob_costs(landscape: BenchmarkLandscape, best: Any) -> dict[tuple[int, str], float]:
    """(optimum's stage, knob) -> the fraction of the optimum (``best``, its
    :func:`optimum`) left with that knob alone at its worst value of the table."""
    if best is None:
        return {}
    costs: dict[tuple[int, str], float] = {}
    for knob, values in OUR_TABLE.get(best.stage, {}).items():
        worst = min(value(landscape, {**best.zero, knob: v}, best.mbs) for v in values)
        costs[(best.stage, knob)] = worst / best.throughput
    return costs


@attrs.define
class Family:
    """A family's landscapes by key, their optima (computed once: each is a search of the
    whole knob table) and the best over knobs of every (landscape, stage, mbs) asked."""

    landscapes: dict[str, BenchmarkLandscape]
    optima: dict[str, Any]
    _best_at: dict[tuple[str, int, int], float] = attrs.field(factory=dict)

    @classmethod
    def of(cls, name: str, count: int) -> Family:
        landscapes = {landscape.key: landscape for landscape in _landscapes(name, count, "")}
        return cls(landscapes, {key: optimum(land) for key, land in landscapes.items()})

    def best_over_knobs(self, key: str, stage: int, mbs: int) -> float:
        if (key, stage, mbs) not in self._best_at:
            self._best_at[(key, stage, mbs)] = best_over_knobs(self.landscapes[key], stage, mbs)
        return self._best_at[(key, stage, mbs)]


def diagnose(
    runs: Sequence[Mapping[str, Any]], family: Family, name: str, method: str, concurrency: int
) -> tuple[collections.Counter[str], list[str]]:
    """Counts per class over the runs of one cell (family ``name``), and the landscapes of
    its knob misses."""
    counts: collections.Counter[str] = collections.Counter()
    knob_misses = []
    for run in runs:
        cell = (run["impl"], run["method"], run["family"], run["concurrency"], run["sweep"])
        if cell != ("ours", method, name, concurrency, ""):
            continue
        key = run["landscape"]
        best = family.optima[key]
        if best is None:
            continue
        tried = {
            (stage, mbs)
            for stage, mbs, kind in zip(run["stage"], run["mbs"], run["kinds"], strict=True)
            if stage is not None and kind in "sc"
        }
        other_knobs = max((family.best_over_knobs(key, s, m) for s, m in tried), default=0.0)
        verdict = classify(
            max(run["fraction"]), other_knobs / best.throughput, best.stage, (s for s, _ in tried)
        )
        counts[verdict] += 1
        if verdict == "knobs":
            knob_misses.append(key)
    return counts, knob_misses


def _read_runs(results: pathlib.Path) -> list[dict[str, Any]]:
    """The runs of ``results/runs.json``, or of ``runs.json.gz`` (as kept in the repository)."""
    plain = results / "runs.json"
    if plain.is_file():
        text = plain.read_text()
    else:
        with gzip.open(results / "runs.json.gz", "rt") as packed:
            text = packed.read()
    runs: list[dict[str, Any]] = json.loads(text)["runs"]
    return runs


def _landscape_count(results: pathlib.Path) -> int:
    """How many landscapes per family the run drew (its settings; 30 if not recorded)."""
    summary = results / "search_efficiency.json"
    if not summary.is_file():
        return DEFAULT_LANDSCAPES
    return int(json.loads(summary.read_text())["settings"].get("landscapes", DEFAULT_LANDSCAPES))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=pathlib.Path, help="a search-efficiency --out folder")
    parser.add_argument("--family", default="heldout")
    parser.add_argument("--method", default="model")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args(argv)
    runs = _read_runs(args.results)
    family = Family.of(args.family, _landscape_count(args.results))
    missed: set[str] = set()
    for concurrency in args.concurrency:
        counts, knob_misses = diagnose(runs, family, args.family, args.method, concurrency)
        total = sum(counts.values())
        cells = ", ".join(f"{k} {counts[k]}" for k in ("reached", "knobs", "micro-batch", "stage"))
        print(f"{args.family} x{concurrency}, {args.method}, {total} runs: {cells}")
        missed.update(knob_misses)
    costs: dict[tuple[int, str], list[float]] = collections.defaultdict(list)
    for key in sorted(missed):
        for cell, left in knob_costs(family.landscapes[key], family.optima[key]).items():
            costs[cell].append(left)
    print(f"knob misses on {len(missed)} landscapes; one knob at its worst value leaves (median):")
    for (stage, knob), lefts in sorted(costs.items()):
        print(f"  ZeRO {stage} {knob}: {statistics.median(lefts):.3f} of the optimum")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
