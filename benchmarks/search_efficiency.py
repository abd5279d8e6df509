"""Search efficiency: how many trials each search needs to get close to a landscape's optimum.

Runs our ``binary``, ``random``, ``asha`` and ``model``, upstream's ``binary``, ``random``
and ``asha`` (``determined.pytorch.dsat``, determined 0.37.0) and DeepSpeed's own
autotuner with each of its tuners (``grid``, ``random``, ``model_based``; DeepSpeed
0.19.8, ``native.py``) on the same seeded synthetic landscapes. Ours and upstream's are
driven by the same ``SearchEngine`` and replay executor; DeepSpeed's runs its own flow
against a resource manager that answers from the landscape. They are compared on:

* trials needed to reach 95 % and 99 % of the optimum (profiling trial counted; a run that
  never gets there counts as ``max_trials + 1``), and how often a run gets there;
* best noise-free throughput found after 16 and 32 trials, as a fraction of the optimum;
* trials wasted on OOMs; trials run before the search ended;
* issue 5's targets for ``model`` (``targets.py``).

Every trial is scored by ``Landscape.true_throughput`` of its zero block and micro-batch.
The optimum of a landscape is the largest of ``Landscape.optimum(tables=...)`` over our
knob table, upstream's and DeepSpeed's. ``--landscapes N`` takes the first N landscapes
where something fits (seeds 0, 1, ...); those where nothing fits are reported and skipped.
The statistics are in ``efficiency.py``, the report in ``efficiency_report.py``.

DeepSpeed 0.19.8 orders a tuning space's experiments through a ``set`` of JSON strings
(``autotuning.utils.remove_dupe_dicts``), so its grid order, and with it every tuner's
run, follows Python's string hashing: run with ``PYTHONHASHSEED=0`` to reproduce the
numbers (the report records the value). Usage::

    PYTHONHASHSEED=0 python -m benchmarks.search_efficiency [--landscapes 30] [--seeds 10]
        [--max-trials 64] [--max-concurrent-trials 4] [--no-native] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from benchmarks import native
from benchmarks.efficiency import (
    Entry,
    LandscapeInfo,
    Run,
    RunScore,
    ScoreKey,
    SpaceOptima,
    entries,
    paired,
    score_run,
    summarize,
)
from benchmarks.efficiency_report import FIRST_SEED, Report, dump_json, render, to_json
from benchmarks.harness import (
    ALL_STAGES,
    KnobTables,
    RecordingExecutor,
    build_ours,
    drive,
    package_digest,
    quiet,
    write_model_dir,
)
from benchmarks.targets import MODEL, model_targets
from benchmarks.upstream import build_upstream, upstream_table
from determined_dsat.testing.synthetic import Landscape

BUILDERS: dict[str, Callable[..., Any]] = {"ours": build_ours, "upstream": build_upstream}
DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results"


@attrs.frozen
class Tables:
    """The knob tables the optimum is taken over (DeepSpeed's: None when not run)."""

    upstream: KnobTables
    native: KnobTables | None


def run_landscape(
    seed: int, opts: argparse.Namespace, tables: Tables, which: list[Entry]
) -> tuple[LandscapeInfo, list[Run]]:
    """Every entry with every random seed on landscape ``seed``."""
    landscape = Landscape.draw(seed)
    optima = SpaceOptima.of(landscape, tables.upstream, ALL_STAGES, tables.native)
    runs: list[Run] = []
    if optima.optimum > 0:
        with tempfile.TemporaryDirectory(prefix="dsat-bench-") as tmp:
            model = write_model_dir(pathlib.Path(tmp), landscape.slots)
            for impl, method in which:
                for random_seed in range(FIRST_SEED, FIRST_SEED + opts.seeds):
                    runs.append(run_one(impl, method, landscape, model, random_seed, opts))
    info = LandscapeInfo(
        seed=seed,
        slots=landscape.slots,
        gpu_mem_gib=landscape.gpu_mem // 1024**3,
        num_params=landscape.num_params,
        default_max_mbs=(
            landscape.true_max_mbs(1),
            landscape.true_max_mbs(2),
            landscape.true_max_mbs(3),
        ),
        ours_space_optimum=optima.ours,
        upstream_space_optimum=optima.upstream,
        best_found=max((r.best for r in runs), default=0.0),
        native_space_optimum=optima.native,
    )
    return info, runs


def run_one(
    impl: str, method: str, landscape: Landscape, model: Any, seed: int, opts: argparse.Namespace
) -> Run:
    limits = {"max_trials": opts.max_trials, "max_concurrent_trials": opts.max_concurrent_trials}
    if impl == "deepspeed":
        trials, ended = native.run_native(method, landscape, seed=seed, **limits)
        return Run(impl, method, landscape.seed, seed, trials, ended)
    search = BUILDERS[impl](method, model, seed=seed, **limits)
    result = drive(search, RecordingExecutor(landscape))
    return Run(impl, method, landscape.seed, seed, result.trials, result.ended)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--landscapes", type=int, default=30, help="the first N landscapes where something fits"
    )
    p.add_argument("--seeds", type=int, default=10, help="random seeds per landscape")
    p.add_argument("--max-trials", type=int, default=64)
    p.add_argument("--max-concurrent-trials", type=int, default=4)
    p.add_argument("--no-native", action="store_true", help="skip DeepSpeed's own tuners")
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="results directory")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    quiet()
    why_not = "not run (--no-native)" if opts.no_native else native.available()
    use_native = why_not is None
    native_note = (
        "run through DeepSpeed's own `Autotuner.tune()` (its profiling run, micro-batch "
        "search and tuner, `fast: false`, every other autotuning option at its default) "
        "with a resource manager that answers each experiment from the landscape "
        "(`benchmarks/native.py`); each experiment is a trial, and the budget stops it at "
        f"{opts.max_trials}."
        if use_native
        else f"not run: {why_not}."
    )
    if use_native:
        hash_seed = os.environ.get("PYTHONHASHSEED", "random")
        native_note += (
            f" PYTHONHASHSEED={hash_seed}: DeepSpeed 0.19.8 orders each tuning space through a "
            "`set` of JSON strings (`remove_dupe_dicts`), so its runs depend on string hashing."
        )
        if hash_seed == "random":
            print("warning: PYTHONHASHSEED is not set; DeepSpeed's runs will not repeat exactly",
                  file=sys.stderr)  # fmt: skip
    tables = Tables(upstream_table(ALL_STAGES), native.native_table() if use_native else None)
    which = entries(use_native)
    start = time.perf_counter()
    infos: list[LandscapeInfo] = []
    runs: list[Run] = []
    seed = 0
    while sum(i.feasible for i in infos) < opts.landscapes:
        info, landscape_runs = run_landscape(seed, opts, tables, which)
        infos.append(info)
        runs.extend(landscape_runs)
        print(f"landscape {seed}: {len(landscape_runs)} runs", file=sys.stderr)
        seed += 1
    elapsed = time.perf_counter() - start
    optimum = {i.seed: i.optimum for i in infos if i.feasible}
    landscapes = {s: Landscape.draw(s) for s in optimum}
    scores: dict[ScoreKey, RunScore] = {
        (r.impl, r.method, r.landscape, r.seed): score_run(
            r, optimum[r.landscape], opts.max_trials, landscapes[r.landscape]
        )
        for r in runs
        if r.landscape in optimum
    }
    summaries = {
        entry: summarize(*entry, [s for k, s in scores.items() if k[:2] == entry])
        for entry in which
    }
    keys = sorted({(k[2], k[3]) for k in scores})
    others = [e for e in which if e != MODEL]
    report = Report(
        opts=opts,
        infos=infos,
        runs=runs,
        entries=which,
        summaries=summaries,
        pairs=paired(scores, keys),
        model_pairs=paired(scores, keys, [(MODEL, e) for e in others]),
        targets=model_targets(summaries, scores, [e for e in others if e[0] != "ours"]),
        native=native_note,
        elapsed_s=elapsed,
        digest=package_digest(),
    )
    text = render(report)
    print(text)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "search_efficiency.md").write_text(text)
    (opts.out / "search_efficiency.json").write_text(dump_json(to_json(report), "runs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
