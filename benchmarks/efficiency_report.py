"""The search-efficiency benchmark's report, as Markdown and as JSON."""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from benchmarks.efficiency import (
    DIAGNOSIS_AT,
    Entry,
    LandscapeInfo,
    MethodSummary,
    Paired,
    Run,
    Verdict,
    verdicts,
)
from benchmarks.harness import OUTCOME_CODES, markdown_table, trials_to_json
from benchmarks.knob_tables import TableComparison, compare_tables
from benchmarks.targets import Target

FIRST_SEED = 42
LANDSCAPE_NOTE = (
    "Landscapes (`determined_dsat/testing/synthetic.py`): throughput rises with the "
    "micro-batch and saturates, with a per-stage efficiency; each ZeRO knob DeepSpeed reads "
    "at the trial's stage scales it (numeric knobs smoothly in log10 of the value around a "
    "per-landscape peak, booleans by a per-landscape factor per setting), a knob a config "
    "leaves out has DeepSpeed's default, and communication buckets take device memory, so "
    "the largest micro-batch that fits depends on the zero block. Every search space is "
    "scored by the same effect functions. The optimum is the largest of the optima over our "
    "knob table, upstream's and DeepSpeed's autotuner's, each `Landscape.optimum(tables=...)`."
)


def summary_table(summaries: Iterable[MethodSummary], max_trials: int) -> list[str]:
    header = [
        "method",
        "impl",
        "runs",
        "trials to 95%",
        "reach 95%",
        "trials to 99%",
        "reach 99%",
        "best/opt @16",
        "best/opt @32",
        f"best/opt @{max_trials}",
        "OOM trials (median / mean)",
        "trials run",
    ]
    rows = [
        [
            s.method,
            s.impl,
            str(s.runs),
            s.trials_to[0.95].show(),
            f"{s.reach_rate(0.95):.0%}",
            s.trials_to[0.99].show(),
            f"{s.reach_rate(0.99):.0%}",
            s.best_after[16].show(1, percent=True),
            s.best_after[32].show(1, percent=True),
            s.best_final.show(1, percent=True),
            f"{s.oom_median:.0f} / {s.oom_mean:.1f}",
            s.trials_run.show(),
        ]
        for s in summaries
    ]
    return markdown_table(header, rows)


def diagnosis_table(summaries: Iterable[MethodSummary]) -> list[str]:
    header = [
        "method",
        "impl",
        f"configs' ceiling / optimum @{DIAGNOSIS_AT}",
        f"best found / configs' ceiling @{DIAGNOSIS_AT}",
    ]
    rows = [
        [
            s.method,
            s.impl,
            s.configs_ceiling.show(1, percent=True),
            s.mbs_search.show(1, percent=True),
        ]
        for s in summaries
    ]
    return markdown_table(header, rows)


def verdict_table(items: Iterable[Verdict]) -> list[str]:
    def show(v: Verdict, x: float) -> str:
        return f"{x:.1f}" if v.smaller_is_better else f"{x:.2%}"

    rows = [[v.method, v.measure, show(v, v.ours), show(v, v.upstream), v.outcome] for v in items]
    return markdown_table(["method", "median of", "ours", "upstream", "verdict"], rows)


def _p_value(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def paired_table(items: Iterable[Paired], first: str = "ours") -> list[str]:
    rows = [
        [p.method, p.measure, str(p.better), str(p.tie), str(p.worse), _p_value(p.sign_test_p)]
        for p in items
    ]
    header = ["method", "measure", f"{first} better", "tie", f"{first} worse", "sign test p"]
    return markdown_table(header, rows)


def targets_table(items: Iterable[Target]) -> list[str]:
    def show(t: Target, x: float) -> str:
        return f"{x:.1%}" if "best/optimum" in t.target else f"{x:.2f}".rstrip("0").rstrip(".")

    rows = [
        [t.target, t.against, show(t, t.model), show(t, t.reference), "yes" if t.holds else "NO"]
        for t in items
    ]
    return markdown_table(["target", "against", "model", "reference", "holds"], rows)


def tables_paragraph(c: TableComparison) -> str:
    return (
        f"Over the {c.landscapes} feasible landscapes the optimum of our knob table is the "
        f"larger on {c.ours_larger} (by {c.mean_gap_ours_larger:.2%} on average, at most "
        f"{c.max_gap_ours_larger:.2%}), upstream's on {c.upstream_larger} (by "
        f"{c.mean_gap_upstream_larger:.2%} on average, at most "
        f"{c.max_gap_upstream_larger:.2%}), equal on {c.equal}; mean gap over all "
        f"{c.landscapes}: {c.mean_gap:.2%}; mean upstream/ours: "
        f"{c.mean_upstream_over_ours:.4f}."
    )


def native_paragraph(infos: Sequence[LandscapeInfo]) -> str:
    feasible = [i for i in infos if i.feasible and i.native_space_optimum > 0]
    if not feasible:
        return "DeepSpeed's autotuner was not run; its knob table is not in the optimum."
    ahead = [
        i.native_space_optimum / max(i.ours_space_optimum, i.upstream_space_optimum) - 1.0
        for i in feasible
    ]
    wins = [a for a in ahead if a > 1e-9]
    ratio = [i.native_space_optimum / i.optimum for i in feasible]
    return (
        f"DeepSpeed's autotuner's knob table (its templates with its tuning spaces): its "
        f"optimum is the largest on {len(wins)} of {len(feasible)} landscapes"
        + (f" (by at most {max(wins):.2%})" if wins else "")
        + f"; its optimum over the overall optimum: median {float(np.median(ratio)):.4f}, "
        f"lowest {min(ratio):.4f}."
    )


def landscape_table(
    infos: Sequence[LandscapeInfo], runs: Sequence[Run], entries: Sequence[Entry]
) -> list[str]:
    header = [
        "landscape",
        "slots",
        "GPU GiB",
        "params",
        "max mbs at DS defaults (z1/z2/z3)",
        "opt (our table)",
        "opt (upstream table)",
        "opt (DeepSpeed's)",
        "upstream/ours",
        *(f"{impl} {m}" for impl, m in entries),
    ]
    finals: dict[tuple[int, str, str], list[float]] = {}
    for r in runs:
        finals.setdefault((r.landscape, r.impl, r.method), []).append(r.best)
    rows = []
    for info in infos:
        row = [
            str(info.seed),
            str(info.slots),
            str(info.gpu_mem_gib),
            f"{info.num_params:.2e}",
            "/".join(str(m) for m in info.default_max_mbs),
            f"{info.ours_space_optimum:.1f}",
            f"{info.upstream_space_optimum:.1f}",
            f"{info.native_space_optimum:.1f}",
        ]
        if not info.feasible:
            rows.append(row + ["—"] + ["nothing fits"] * (len(header) - len(row) - 1))
            continue
        row.append(f"{info.upstream_space_optimum / info.ours_space_optimum:.3f}")
        for impl, method in entries:
            values = finals.get((info.seed, impl, method), [0.0])
            row.append(f"{np.median(values) / info.optimum:.1%}")
        rows.append(row)
    return markdown_table(header, rows)


def variety(infos: Sequence[LandscapeInfo]) -> str:
    """How the feasible landscapes vary in model size, device memory and slots."""
    feasible = [i for i in infos if i.feasible]

    def counts(values: Iterable[int]) -> str:
        seen: dict[int, int] = {}
        for v in values:
            seen[v] = seen.get(v, 0) + 1
        return ", ".join(f"{k}: {n}" for k, n in sorted(seen.items()))

    params = [i.num_params for i in feasible]
    return (
        f"The {len(feasible)} feasible landscapes: models of {min(params):.2e} to "
        f"{max(params):.2e} parameters (median {float(np.median(params)):.2e}); GPUs per "
        f"trial ({counts(i.slots for i in feasible)}); GiB per GPU "
        f"({counts(i.gpu_mem_gib for i in feasible)})."
    )


@attrs.frozen
class Report:
    """Everything one search-efficiency run produced, ready to render."""

    opts: argparse.Namespace
    infos: Sequence[LandscapeInfo]
    runs: Sequence[Run]
    entries: Sequence[Entry]
    summaries: Mapping[Entry, MethodSummary]
    pairs: Sequence[Paired]  # ours vs upstream, method by method
    model_pairs: Sequence[Paired]  # model vs every other entry
    targets: Sequence[Target]
    native: str  # how DeepSpeed's tuners were run, or why they were not
    elapsed_s: float
    digest: str


def render(r: Report) -> str:
    opts = r.opts
    feasible = [i for i in r.infos if i.feasible]
    skipped = [i.seed for i in r.infos if not i.feasible]
    above = [i.seed for i in r.infos if i.above_optimum]
    seeds = ", ".join(str(i.seed) for i in feasible)
    ordered = [r.summaries[e] for e in r.entries]
    holds = sum(t.holds for t in r.targets)
    lines = [
        "# Search efficiency: ours, upstream determined.pytorch.dsat and DeepSpeed's autotuner",
        "",
        f"The first {len(feasible)} landscapes where something fits (`Landscape.draw(seed)` for "
        f"seed in {seeds}; drawn and left out because nothing fits, every trial OOMs: "
        f"{', '.join(map(str, skipped)) or 'none'}), {opts.seeds} random seeds each "
        f"({FIRST_SEED}..{FIRST_SEED + opts.seeds - 1}; {len(feasible) * opts.seeds} runs per "
        f"method), --max-trials {opts.max_trials}, --max-concurrent-trials "
        f"{opts.max_concurrent_trials}, metric throughput, ZeRO stages 1 2 3, every method "
        f"option at its default. Wall time {r.elapsed_s:.1f} s; determined_dsat sources "
        f"{r.digest}.",
        "",
        LANDSCAPE_NOTE,
        "",
        variety(r.infos),
        "",
        f"DeepSpeed's tuners: {r.native}",
        "",
        "Trial counts include the profiling trial; a run that never reaches the level counts "
        f"as {opts.max_trials + 1}; *reach* is the share of runs that got there within "
        f"{opts.max_trials} trials; *trials run* is how many the search used before it ended "
        "(a search may stop early). Cells are median [25th–75th percentile] over runs.",
        "",
        *(
            [f"**Warning**: a run found more than the optimum on landscapes {above}.", ""]
            if above
            else []
        ),
        "## Per method",
        "",
        *summary_table(ordered, opts.max_trials),
        "",
        "## `model` against issue 5's targets",
        "",
        f"{holds} of {len(r.targets)} hold. Percentile-landscape rows take, per landscape, the "
        "median over seeds, then the 25th percentile across landscapes of a best/optimum "
        "fraction (75th of a trial count: the bad quartile either way).",
        "",
        *targets_table(r.targets),
        "",
        "## Ours vs upstream (medians)",
        "",
        *verdict_table(verdicts(r.summaries)),
        "",
        f"## Where the value comes from (first {DIAGNOSIS_AT} trials)",
        "",
        "*Configs' ceiling*: the best value the zero blocks a run trained could give, each at "
        "its own largest micro-batch (how good the configuration choice was); *best found / "
        "configs' ceiling*: how close the micro-batch search got to that.",
        "",
        *diagnosis_table(ordered),
        "",
        "## Paired by (landscape, seed)",
        "",
        "The same landscape and seed number, ours against upstream (their random streams "
        "differ, so this is a matched comparison, not the same random draws).",
        "",
        *paired_table(r.pairs),
        "",
        "`model` against every other search, the same way. `model` makes no random choices: "
        "its runs on a landscape are identical for every seed, so these pairs are not "
        "independent and the sign test's p-values overstate the evidence (by landscape, "
        "there are only as many independent pairs as landscapes).",
        "",
        *paired_table(r.model_pairs, first="model"),
        "",
        "## The knob tables",
        "",
        tables_paragraph(compare_tables(r.infos)),
        "",
        native_paragraph(r.infos),
        "",
        "## Landscapes",
        "",
        "Optima in samples/s; the method columns are the median over seeds of the best value "
        f"found in {opts.max_trials} trials, as a fraction of the optimum.",
        "",
        *landscape_table(r.infos, r.runs, r.entries),
        "",
    ]
    return "\n".join(lines)


def to_json(r: Report) -> dict[str, Any]:
    opts = r.opts
    optimum = {i.seed: i.optimum for i in r.infos}
    return {
        "settings": {
            "landscapes": opts.landscapes,
            "seeds": list(range(FIRST_SEED, FIRST_SEED + opts.seeds)),
            "max_trials": opts.max_trials,
            "max_concurrent_trials": opts.max_concurrent_trials,
            "metric": "throughput",
            "zero_stages": [1, 2, 3],
        },
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "determined_dsat_sources": r.digest,
        "elapsed_s": r.elapsed_s,
        "native": r.native,
        "landscapes": [i.to_json() for i in r.infos],
        "tables": attrs.asdict(compare_tables(r.infos)),
        "summary": [r.summaries[e].to_json() for e in r.entries],
        "targets": [attrs.asdict(t) | {"holds": t.holds} for t in r.targets],
        "verdicts": [attrs.asdict(v) | {"outcome": v.outcome} for v in verdicts(r.summaries)],
        "paired": [
            attrs.asdict(p) | {"sign_test_p": p.sign_test_p} for p in (*r.pairs, *r.model_pairs)
        ],
        "outcome_codes": OUTCOME_CODES,
        "runs": [
            {
                "impl": run.impl,
                "method": run.method,
                "landscape": run.landscape,
                "seed": run.seed,
                "ended": run.ended,
                **trials_to_json(run.trials, optimum.get(run.landscape, 0.0)),
            }
            for run in r.runs
        ],
    }


def dump_json(data: dict[str, Any], rows_key: str) -> str:
    """JSON indented for reading, except one line per element of ``data[rows_key]``."""
    head = json.dumps({k: v for k, v in data.items() if k != rows_key}, indent=1)
    rows = ",\n".join("  " + json.dumps(row, separators=(",", ":")) for row in data[rows_key])
    return f'{head[:-2]},\n "{rows_key}": [\n{rows}\n ]\n}}\n'
