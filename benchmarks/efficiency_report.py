"""The search-efficiency benchmark's report, as Markdown and as JSON."""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import numpy as np

from benchmarks.efficiency import (
    DIAGNOSIS_AT,
    IMPLEMENTATIONS,
    LandscapeInfo,
    MethodSummary,
    Paired,
    Run,
    TableComparison,
    Verdict,
    compare_tables,
    verdicts,
)
from benchmarks.harness import METHODS, OUTCOME_CODES, markdown_table, trials_to_json

FIRST_SEED = 42
LANDSCAPE_NOTE = (
    "Landscapes (`determined_dsat/runners/synthetic.py`): throughput rises with the "
    "micro-batch and saturates, with a per-stage efficiency; each ZeRO knob DeepSpeed reads "
    "at the trial's stage scales it (numeric knobs smoothly in log10 of the value around a "
    "per-landscape peak, booleans by a per-landscape factor per setting), a knob a config "
    "leaves out has DeepSpeed's default, and communication buckets take device memory, so "
    "the largest micro-batch that fits depends on the zero block. Both search spaces are "
    "scored by the same effect functions. The optimum is max(optimum over our knob table, "
    "optimum over upstream's), each `Landscape.optimum(tables=...)`."
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


def paired_table(items: Iterable[Paired]) -> list[str]:
    rows = [
        [p.method, p.measure, str(p.better), str(p.tie), str(p.worse), _p_value(p.sign_test_p)]
        for p in items
    ]
    header = ["method", "measure", "ours better", "tie", "ours worse", "sign test p"]
    return markdown_table(header, rows)


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


def landscape_table(infos: Sequence[LandscapeInfo], runs: Sequence[Run]) -> list[str]:
    header = [
        "landscape",
        "slots",
        "GPU GiB",
        "params",
        "max mbs at DS defaults (z1/z2/z3)",
        "opt (our table)",
        "opt (upstream table)",
        "upstream/ours",
        *(f"{impl} {m}" for impl in IMPLEMENTATIONS for m in METHODS),
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
        ]
        if not info.feasible:
            rows.append(row + ["—"] + ["nothing fits"] * (len(header) - len(row) - 1))
            continue
        row.append(f"{info.upstream_space_optimum / info.ours_space_optimum:.3f}")
        for impl in IMPLEMENTATIONS:
            for method in METHODS:
                values = finals.get((info.seed, impl, method), [0.0])
                row.append(f"{np.median(values) / info.optimum:.1%}")
        rows.append(row)
    return markdown_table(header, rows)


def render(
    opts: argparse.Namespace,
    infos: Sequence[LandscapeInfo],
    runs: Sequence[Run],
    summaries: dict[tuple[str, str], MethodSummary],
    pairs: Sequence[Paired],
    elapsed_s: float,
    digest: str,
) -> str:
    feasible = [i for i in infos if i.feasible]
    skipped = [i.seed for i in infos if not i.feasible]
    above = [i.seed for i in infos if i.above_optimum]
    lines = [
        "# Search efficiency: ours vs upstream determined.pytorch.dsat",
        "",
        f"{len(infos)} landscapes (`Landscape.draw(0..{len(infos) - 1})`), {opts.seeds} random "
        f"seeds each ({FIRST_SEED}..{FIRST_SEED + opts.seeds - 1}), --max-trials "
        f"{opts.max_trials}, --max-concurrent-trials {opts.max_concurrent_trials}, metric "
        f"throughput, ZeRO stages 1 2 3, every method option at its default. "
        f"Statistics over the {len(feasible)} landscapes where something fits "
        f"({len(feasible) * opts.seeds} runs per method); left out ({len(skipped)}: nothing "
        f"fits, every trial OOMs): {', '.join(map(str, skipped)) or 'none'}. Wall time "
        f"{elapsed_s:.1f} s; determined_dsat sources {digest}.",
        "",
        LANDSCAPE_NOTE,
        "",
        "Trial counts include the profiling trial; a run that never reaches the level counts "
        f"as {opts.max_trials + 1}; *reach* is the share of runs that got there within "
        f"{opts.max_trials} trials. Cells are median [25th–75th percentile].",
        "",
        *(
            [f"**Warning**: a run found more than the optimum on landscapes {above}.", ""]
            if above
            else []
        ),
        "## Per method",
        "",
        *summary_table(summaries.values(), opts.max_trials),
        "",
        "## Ours vs upstream (medians)",
        "",
        *verdict_table(verdicts(summaries)),
        "",
        f"## Where the value comes from (first {DIAGNOSIS_AT} trials)",
        "",
        "*Configs' ceiling*: the best value the zero blocks a run trained could give, each at "
        "its own largest micro-batch (how good the configuration choice was); *best found / "
        "configs' ceiling*: how close the micro-batch search got to that.",
        "",
        *diagnosis_table(summaries.values()),
        "",
        "## Paired by (landscape, seed)",
        "",
        "The same landscape and seed number, ours against upstream (their random streams "
        "differ, so this is a matched comparison, not the same random draws).",
        "",
        *paired_table(pairs),
        "",
        "## The two knob tables",
        "",
        tables_paragraph(compare_tables(infos)),
        "",
        "## Landscapes",
        "",
        "Optima in samples/s; the method columns are the median over seeds of the best value "
        f"found in {opts.max_trials} trials, as a fraction of the optimum.",
        "",
        *landscape_table(infos, runs),
        "",
    ]
    return "\n".join(lines)


def to_json(
    opts: argparse.Namespace,
    infos: Sequence[LandscapeInfo],
    runs: Sequence[Run],
    summaries: dict[tuple[str, str], MethodSummary],
    pairs: Sequence[Paired],
    elapsed_s: float,
    digest: str,
) -> dict[str, Any]:
    optimum = {i.seed: i.optimum for i in infos}
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
        "determined_dsat_sources": digest,
        "elapsed_s": elapsed_s,
        "landscapes": [i.to_json() for i in infos],
        "tables": attrs.asdict(compare_tables(infos)),
        "summary": [s.to_json() for s in summaries.values()],
        "verdicts": [attrs.asdict(v) | {"outcome": v.outcome} for v in verdicts(summaries)],
        "paired": [attrs.asdict(p) | {"sign_test_p": p.sign_test_p} for p in pairs],
        "outcome_codes": OUTCOME_CODES,
        "runs": [
            {
                "impl": r.impl,
                "method": r.method,
                "landscape": r.landscape,
                "seed": r.seed,
                "ended": r.ended,
                **trials_to_json(r.trials, optimum.get(r.landscape, 0.0)),
            }
            for r in runs
        ],
    }


def dump_json(data: dict[str, Any], rows_key: str) -> str:
    """JSON indented for reading, except one line per element of ``data[rows_key]``."""
    head = json.dumps({k: v for k, v in data.items() if k != rows_key}, indent=1)
    rows = ",\n".join("  " + json.dumps(row, separators=(",", ":")) for row in data[rows_key])
    return f'{head[:-2]},\n "{rows_key}": [\n{rows}\n ]\n}}\n'
