"""Search efficiency: how many trials each method needs to get close to a landscape's optimum.

Runs our ``binary``, ``random`` and ``asha`` and upstream's (``determined.pytorch.dsat``,
determined 0.37.0) on the same seeded synthetic landscapes, both driven by the same
``SearchEngine`` and replay executor, and compares them on:

* trials needed to reach 95 % and 99 % of the optimum (profiling trial counted; a run that
  never gets there counts as ``max_trials + 1``), and how often a run gets there;
* best noise-free throughput found after 16 and 32 trials, as a fraction of the optimum;
* trials wasted on OOMs.

Every trial is scored by ``Landscape.true_throughput`` of its zero block and micro-batch.
The optimum of a landscape is max(``Landscape.optimum(tables=`` our knob table ``)``,
``Landscape.optimum(tables=`` upstream's ``)``). Landscapes where nothing fits are
reported but left out of the statistics. The statistics are in ``efficiency.py``, the
report in ``efficiency_report.py``. Usage::

    python -m benchmarks.search_efficiency [--landscapes 24] [--seeds 10]
        [--max-trials 64] [--max-concurrent-trials 4] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.efficiency import (
    IMPLEMENTATIONS,
    LandscapeInfo,
    Run,
    RunScore,
    ScoreKey,
    SpaceOptima,
    paired,
    score_run,
    summarize,
)
from benchmarks.efficiency_report import FIRST_SEED, dump_json, render, to_json
from benchmarks.harness import (
    ALL_STAGES,
    METHODS,
    KnobTables,
    RecordingExecutor,
    build_ours,
    drive,
    package_digest,
    quiet,
    write_model_dir,
)
from benchmarks.upstream import build_upstream, upstream_table
from determined_dsat.runners.synthetic import Landscape

BUILDERS: dict[str, Callable[..., Any]] = {"ours": build_ours, "upstream": build_upstream}
DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results"


def run_landscape(
    seed: int, opts: argparse.Namespace, upstream: KnobTables
) -> tuple[LandscapeInfo, list[Run]]:
    """Every method of both implementations, with every random seed, on landscape ``seed``."""
    landscape = Landscape.draw(seed)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="dsat-bench-") as tmp:
        model = write_model_dir(pathlib.Path(tmp), landscape.slots)
        for impl in IMPLEMENTATIONS:
            for method in METHODS:
                for random_seed in range(FIRST_SEED, FIRST_SEED + opts.seeds):
                    search = BUILDERS[impl](
                        method,
                        model,
                        max_trials=opts.max_trials,
                        max_concurrent_trials=opts.max_concurrent_trials,
                        seed=random_seed,
                    )
                    result = drive(search, RecordingExecutor(landscape))
                    runs.append(Run(impl, method, seed, random_seed, result.trials, result.ended))
    optima = SpaceOptima.of(landscape, upstream, ALL_STAGES)
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
    )
    return info, runs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--landscapes", type=int, default=24, help="landscapes 0..N-1")
    p.add_argument("--seeds", type=int, default=10, help="random seeds per landscape")
    p.add_argument("--max-trials", type=int, default=64)
    p.add_argument("--max-concurrent-trials", type=int, default=4)
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="results directory")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    quiet()
    upstream = upstream_table(ALL_STAGES)
    start = time.perf_counter()
    infos: list[LandscapeInfo] = []
    runs: list[Run] = []
    for seed in range(opts.landscapes):
        info, landscape_runs = run_landscape(seed, opts, upstream)
        infos.append(info)
        runs.extend(landscape_runs)
        print(f"landscape {seed}: {len(landscape_runs)} runs", file=sys.stderr)
    elapsed = time.perf_counter() - start
    optimum = {i.seed: i.optimum for i in infos if i.feasible}
    landscapes = {seed: Landscape.draw(seed) for seed in optimum}
    scores: dict[ScoreKey, RunScore] = {
        (r.impl, r.method, r.landscape, r.seed): score_run(
            r, optimum[r.landscape], opts.max_trials, landscapes[r.landscape]
        )
        for r in runs
        if r.landscape in optimum
    }
    summaries = {
        (impl, method): summarize(
            impl, method, [s for k, s in scores.items() if k[0] == impl and k[1] == method]
        )
        for method in METHODS
        for impl in IMPLEMENTATIONS
    }
    pairs = paired(scores, sorted({(k[2], k[3]) for k in scores}))
    digest = package_digest()
    report = render(opts, infos, runs, summaries, pairs, elapsed, digest)
    print(report)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "search_efficiency.md").write_text(report)
    data = to_json(opts, infos, runs, summaries, pairs, elapsed, digest)
    (opts.out / "search_efficiency.json").write_text(dump_json(data, "runs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
