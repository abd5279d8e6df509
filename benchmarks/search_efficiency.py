"""Search efficiency: what each search method gives the user, how soon and at what cost.

Runs our ``binary``, ``random``, ``asha`` and ``model`` (set up exactly as the ``dsat``
CLI sets them up: ``parse_settings`` of a replay command line, every flag at its default:
baseline trial on, ``--confirm-top 3``, ``--mbs-tolerance 0.05``, 64 trials), upstream's
``binary``, ``random`` and ``asha`` (determined 0.37.0, as their CLI sets them up) and
DeepSpeed's own autotuner with each of its tuners (``grid``, ``random``, ``model_based``;
DeepSpeed 0.19.8, ``native.py``) on the landscapes of named families:

* ``tuning``: our methods are tuned on it; ``heldout``: only reported on;
* ``synthetic``: the old landscapes (our own formulas), for continuity.

Every method runs at 1, 4 and 16 trials at once (``--concurrency``), with several seeds;
trials take the landscape's simulated durations (``recording.py``). Scores
(``scoring.py``): the final pick over the optimum, trials and simulated hours to 95 % /
99 %, OOM trials, trials run, total hours; the targets are checked by ``targets.py``.
Landscapes are spread over ``--workers`` processes. Results go to
``benchmarks/results/<name>/``: ``search_efficiency.md``, ``search_efficiency.json``
(settings, landscapes, summaries, targets) and ``runs.json`` (every run's trials).

DeepSpeed 0.19.8 orders a tuning space's experiments through a ``set`` of JSON strings
(``autotuning.utils.remove_dupe_dicts``), so its runs follow Python's string hashing: run
with ``PYTHONHASHSEED=0`` to reproduce them. Usage::

    PYTHONHASHSEED=0 python -m benchmarks.search_efficiency [--families tuning heldout
        synthetic] [--landscapes 30] [--seeds 5] [--concurrency 1 4 16] [--workers 2]
        [--max-trials 64] [--no-native] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pathlib
import shlex
import sys
import time
from collections.abc import Sequence

from benchmarks import native
from benchmarks.efficiency import FIRST_SEED, LandscapeInfo, Plan, entries, run_plan_json
from benchmarks.efficiency_report import (
    Provenance,
    checks_json,
    git_commit,
    render,
    write_results,
)
from benchmarks.families.catalog import FAMILIES
from benchmarks.harness import package_digest, quiet
from benchmarks.runs import Run
from benchmarks.scoring import summarize_runs
from benchmarks.targets import evaluate

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def execute(plans: Sequence[Plan], workers: int) -> tuple[list[LandscapeInfo], list[Run]]:
    """Run every plan, ``workers`` processes at a time (1: in this process); results come
    back in plan order whatever order they finish in."""
    texts = [p.to_json() for p in plans]
    results: list[str] = []
    if workers <= 1:
        results = [run_plan_json(t) for t in texts]
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for i, text in enumerate(pool.imap(run_plan_json, texts)):
                results.append(text)
                print(f"{i + 1}/{len(texts)} landscapes done", file=sys.stderr, flush=True)
    infos, runs = [], []
    for text in results:
        data = json.loads(text)
        infos.append(LandscapeInfo.from_json(data["info"]))
        runs += [Run.from_json(r) for r in data["runs"]]
    return infos, runs


def hash_seed(native_too: bool) -> str:
    """PYTHONHASHSEED, with a warning when DeepSpeed runs and it is not fixed."""
    seed = os.environ.get("PYTHONHASHSEED", "random")
    if native_too and seed == "random":
        print("warning: PYTHONHASHSEED is not set; DeepSpeed's runs will not repeat exactly",
              file=sys.stderr)  # fmt: skip
    return seed


def native_note(opts: argparse.Namespace) -> tuple[bool, str]:
    """Whether DeepSpeed's tuners run, and a sentence saying how (or why not)."""
    why_not = "not run (--no-native)" if opts.no_native else native.available()
    if why_not is not None:
        return False, f"DeepSpeed's tuners: {why_not}."
    return True, (
        "DeepSpeed's tuners: its own `Autotuner.tune()` (profile, micro-batch search, then "
        "the tuner; `fast: false`, every other option at its default) with a resource "
        "manager answering from the landscape on a simulated clock, as many experiments at "
        f"once as trials at once, stopped at {opts.max_trials} experiments."
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--landscapes", type=int, default=30, help="landscapes per family")
    p.add_argument("--seeds", type=int, default=5, help=f"random seeds from {FIRST_SEED}")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--max-trials", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--no-native", action="store_true", help="skip DeepSpeed's own tuners")
    p.add_argument("--name", default="search-efficiency", help="results/<name>/")
    p.add_argument("--out", type=pathlib.Path, help="results directory (overrides --name)")
    return p.parse_args(argv)


def plans_of(opts: argparse.Namespace, native_too: bool) -> list[Plan]:
    seeds = list(range(FIRST_SEED, FIRST_SEED + opts.seeds))
    return [
        Plan(
            name, i, opts.landscapes, entries(native_too), opts.concurrency, seeds, opts.max_trials
        )  # fmt: skip
        for name in opts.families
        for i in range(opts.landscapes)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    quiet()
    native_too, note = native_note(opts)
    seed = hash_seed(native_too)
    start = time.perf_counter()
    infos, runs = execute(plans_of(opts, native_too), opts.workers)
    summaries = summarize_runs(runs)
    checks = {f: evaluate(summaries, f, opts.concurrency) for f in opts.families}
    command = "python -m benchmarks.search_efficiency " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    provenance = Provenance(command, git_commit(), package_digest(),
                            time.perf_counter() - start, seed)  # fmt: skip
    settings = [
        f"{opts.landscapes} landscapes per family, seeds {FIRST_SEED}.."
        f"{FIRST_SEED + opts.seeds - 1} (the seed draws the search's random choices and the "
        f"measurement noise), {', '.join(map(str, opts.concurrency))} trials at once, "
        f"--max-trials {opts.max_trials}; ours at the `dsat` CLI's defaults (baseline trial, "
        "--confirm-top 3, --mbs-tolerance 0.05), upstream's at their CLI's defaults.",
        "",
        note,
        "",
        "Targets (`benchmarks/targets.py`) count on the held-out family; on the others they "
        "are shown for information.",
    ]
    title = "Search efficiency: ours, upstream determined.pytorch.dsat and DeepSpeed's autotuner"
    text = render(title, provenance, settings, infos, summaries, checks)
    write_results(
        opts.out or RESULTS / opts.name,
        "search_efficiency",
        text,
        provenance=provenance,
        opts=opts,
        infos=infos,
        summaries=summaries,
        runs=runs,
        extra={"native": note, "targets": checks_json(checks)},
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
