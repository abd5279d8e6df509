"""The search-efficiency benchmark's report, as Markdown and as JSON (also the robustness
benchmark's tables)."""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from benchmarks.efficiency import LandscapeInfo
from benchmarks.families.catalog import ROLES
from benchmarks.harness import markdown_table
from benchmarks.knob_tables import compare_tables
from benchmarks.recording import KIND_CODES, OUTCOME_CODES
from benchmarks.runs import Run
from benchmarks.scoring import PICK_LEVEL, GroupKey, MethodSummary
from benchmarks.targets import TARGET_FAMILY, Check

SCORING_NOTE = (
    "Every value is a fraction of the landscape's optimum: the best noise-free throughput "
    "over stages 1-3 of our knob table, upstream's and DeepSpeed's autotuner's (gas 1, no "
    "offload), or the user's own ds_config if that is better. *Final pick*: the noise-free "
    "value of the ds_config the search recommends at its end (ours: "
    "`DSATSearchMethod.best_ds_config()`, what `best_ds_config.json` gets; upstream: their "
    "tracker's `best_trial`; DeepSpeed: its best record, or its best measured experiment "
    "when the budget stopped it); *pick >= 99%*: the share of runs whose pick is within 1 % "
    "of the optimum. *Best tried*: the best noise-free value any trial had. *Trials to X*: "
    "trials in completion order, every one counted (profile, baseline, confirmations), "
    "until one reaches X of the optimum; *reach*: the share of runs that got there. *Hours "
    "to X*: the simulated clock at the completion of that trial; *hours*: the simulated "
    "length of the whole search. Cells are median [25th-75th percentile] over runs; "
    '"never" where that quantile of runs never got there.'
)


def git_commit() -> str:
    """The checked-out commit (``+dirty`` when the tree has changes), or ``unknown``."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


@attrs.frozen
class Provenance:
    """What made a report: the command line, the code and the machine."""

    command: str
    commit: str
    digest: str  # harness.package_digest()
    elapsed_s: float
    hash_seed: str
    date: str = attrs.field(factory=lambda: datetime.date.today().isoformat())

    def lines(self) -> list[str]:
        return [
            f"Command: `{self.command}`",
            "",
            f"Git commit {self.commit}; determined_dsat sources {self.digest}; "
            f"{self.date}; wall time {self.elapsed_s:.0f} s; PYTHONHASHSEED={self.hash_seed}; "
            f"Python {platform.python_version()}.",
        ]

    def to_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "python": platform.python_version(),
                "platform": platform.platform()}  # fmt: skip


SUMMARY_HEADER = [
    "method",
    "impl",
    "runs",
    "final pick",
    f"pick >= {PICK_LEVEL:.0%}",
    "best tried",
    "trials to 95%",
    "trials to 99%",
    "reach 95% / 99%",
    "OOM trials",
    "trials run",
    "hours to 95%",
    "hours to 99%",
    "hours",
]


def summary_row(s: MethodSummary) -> list[str]:
    return [
        s.method,
        s.impl,
        str(s.runs),
        s.pick.show(1, percent=True),
        f"{s.pick_share:.0%}",
        s.best.show(1, percent=True),
        s.trials_to[0.95].show(),
        s.trials_to[0.99].show(),
        f"{s.reach[0.95]:.0%} / {s.reach[0.99]:.0%}",
        s.oom.show(),
        s.trials.show(),
        s.hours_to[0.95].show(2),
        s.hours_to[0.99].show(2),
        s.hours.show(2),
    ]


def summary_tables(
    summaries: Mapping[GroupKey, MethodSummary], family: str, sweep: str = ""
) -> list[str]:
    """One table per concurrency of a family's summaries."""
    lines: list[str] = []
    for c in sorted({k[2] for k in summaries if k[:2] == (family, sweep)}):
        rows = [summary_row(s) for k, s in summaries.items() if k[:3] == (family, sweep, c)]
        lines += [f"#### {c} trial{'s' if c > 1 else ''} at once", ""]
        lines += [*markdown_table(SUMMARY_HEADER, rows), ""]
    return lines


def targets_lines(checks: Sequence[Check], failures_only: bool = False) -> list[str]:
    """The checks' PASS/FAIL lines (only those that do not pass, if asked)."""
    passed = sum(c.passed for c in checks)
    shown = [c.line() for c in checks if not (failures_only and c.passed)]
    head = f"{passed} of {len(checks)} pass" + ("; those that do not:" if failures_only else ".")
    return [head, "", "```", *shown, "```"] if shown else [head]


def _counts(values: Iterable[int]) -> str:
    seen: dict[int, int] = {}
    for v in values:
        seen[v] = seen.get(v, 0) + 1
    return ", ".join(f"{k}: {n}" for k, n in sorted(seen.items()))


def landscape_lines(infos: Sequence[LandscapeInfo]) -> list[str]:
    """A family's landscapes: size, cluster, optima, and how the knob tables compare."""
    header = ["landscape", "slots", "GPU", "optimum", "ours/opt", "upstream/opt",
              "DeepSpeed's/opt", "baseline/opt", "best run/opt"]  # fmt: skip
    rows = []
    for i in infos:
        opt = i.optimum
        gpu = i.facts.get("gpu", f"{i.facts.get('gpu_mem_gib', '?')} GiB")
        rows.append(
            [i.key, str(i.slots), str(gpu), f"{opt:.1f}"]
            + [
                f"{v / opt:.3f}" if opt > 0 else "—"
                for v in (
                    i.ours_space_optimum,
                    i.upstream_space_optimum,
                    i.native_space_optimum,
                    i.baseline,
                    i.best_found,
                )
            ]  # fmt: skip
        )
    tables = compare_tables(infos)
    above = [i for i in infos if i.above_optimum]
    note = (
        f"Our knob table's optimum is the larger on {tables.ours_larger}, upstream's on "
        f"{tables.upstream_larger}, equal on {tables.equal}. GPUs per trial: "
        f"{_counts(i.slots for i in infos)}."
    )
    if above:
        worst = max(i.best_found / i.optimum for i in above)
        note += (
            f" On {len(above)} landscape(s) a run trained something better than the optimum "
            f"(by at most {worst - 1:.2%}): gradient accumulation > 1, which DeepSpeed's "
            "micro-batch list tries and the gas-1 optimum leaves out."
        )
    return [note, "", *markdown_table(header, rows), ""]


def render(
    title: str,
    provenance: Provenance,
    settings: Sequence[str],
    infos: Sequence[LandscapeInfo],
    summaries: Mapping[GroupKey, MethodSummary],
    checks: Mapping[str, Sequence[Check]],
    target_family: str = TARGET_FAMILY,
) -> str:
    """The Markdown report: settings, targets per family (every line on the family they
    count on, the failures elsewhere), tables per family and concurrency."""
    lines = [f"# {title}", "", *provenance.lines(), "", *settings, "", SCORING_NOTE, ""]
    families = list(dict.fromkeys(i.family for i in infos))
    for name in families:
        mine = [i for i in infos if i.family == name and not i.sweep]
        lines += [f"## Family `{name}` ({ROLES.get(name, '')})", ""]
        if name in checks:
            brief = name != target_family
            lines += ["### Targets", "", *targets_lines(checks[name], brief), ""]
        lines += ["### Per method", "", *summary_tables(summaries, name)]
        lines += ["### Landscapes", "", *landscape_lines(mine)]
    return "\n".join(lines)


def summaries_json(summaries: Mapping[GroupKey, MethodSummary]) -> list[dict[str, Any]]:
    keys = ("family", "sweep", "concurrency")
    return [dict(zip(keys, k[:3])) | s.to_json() for k, s in summaries.items()]


def checks_json(checks: Mapping[str, Sequence[Check]]) -> list[dict[str, Any]]:
    return [
        attrs.asdict(c) | {"passed": c.passed, "line": c.line()}
        for family in checks.values()
        for c in family
    ]


def write_results(
    out: pathlib.Path,
    stem: str,
    text: str,
    *,
    provenance: Provenance,
    opts: argparse.Namespace,
    infos: Sequence[LandscapeInfo],
    summaries: Mapping[GroupKey, MethodSummary],
    runs: Sequence[Run],
    extra: Mapping[str, Any],
) -> None:
    """The report (``stem.md``), its data (``stem.json``: provenance, settings, ``extra``,
    landscapes, summaries) and every run (``runs.json``)."""
    data = {
        "provenance": provenance.to_json(),
        "settings": {
            k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(opts).items()
        },  # fmt: skip
        **extra,
        "landscapes": [i.to_json() for i in infos],
        "summaries": summaries_json(summaries),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    (out / "runs.json").write_text(runs_json(runs))


def runs_json(runs: Sequence[Run]) -> str:
    """Every run, one JSON line each (``{"codes": ..., "runs": [...]}``)."""
    head = json.dumps({"outcome_codes": OUTCOME_CODES, "kind_codes": KIND_CODES})
    rows = ",\n".join("  " + json.dumps(r.to_json(), separators=(",", ":")) for r in runs)
    return f'{head[:-1]},\n "runs": [\n{rows}\n ]\n}}\n'
