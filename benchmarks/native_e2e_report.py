"""The end-to-end benchmark's report: Markdown for people, JSON with every number."""

from __future__ import annotations

import os
import pathlib
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

import attrs

from benchmarks.harness import markdown_table
from benchmarks.native_e2e_proc import REPO, format_duration
from benchmarks.native_e2e_records import NATIVE, OURS, TOOLS, CaseResult, TunerRun

TOOL_LABELS = {NATIVE: "DeepSpeed autotuner", OURS: "our dsat"}
PACKAGES = ("torch", "deepspeed", "determined", "determined-dsat", "numpy")


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """The machine: CPU, cores, memory (GiB), OS, and the load average right now."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()),
    }


def versions() -> dict[str, str]:
    """Python, the packages that matter here, and this repository's commit."""
    found = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["repo_commit"] = _git("rev-parse", "--short=12", "HEAD")
    found["repo_dirty"] = "yes" if _git("status", "--porcelain", "--", "determined_dsat") else "no"
    return found


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def _number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _outcomes(run: TunerRun) -> str:
    parts = ", ".join(f"{k} {v}" for k, v in sorted(run.outcomes.items()))
    return f"{run.trials} ({parts})" if parts else str(run.trials)


def _wall(run: TunerRun) -> str:
    text = format_duration(run.wall_s)
    if run.timed_out:
        return f"{text} (stopped: time limit)"
    if run.exit_code not in (0, None):
        return f"{text} (exit {run.exit_code})"
    return text


def _cap(case: CaseResult, tool: str) -> str:
    if tool == NATIVE:
        return str(case.native_cap)
    return "none" if case.ours_cap is None else str(case.ours_cap)


def case_rows(case: CaseResult) -> list[list[str]]:
    """One row per tool of the per-case table."""
    rows = []
    for tool in TOOLS:
        run = case.runs[tool]
        values = [m.samples_per_s for m in case.measurements if m.tool == tool]
        rows.append(
            [
                case.model.name,
                case.config,
                TOOL_LABELS[tool],
                _cap(case, tool),
                _wall(run),
                _outcomes(run),
                "—" if run.pick is None else run.pick.describe(),
                _number(run.metric),
                _number(case.median(tool)),
                ", ".join(_number(v) for v in values) or "—",
            ]
        )
    return rows


@attrs.frozen
class ReportContext:
    """Everything the report says besides the cases: the command line, when it started
    (UTC, ISO 8601), the machine (:func:`machine_info`), :func:`versions`, the settings
    both tools got, each phase's wall time (seconds) and general notes."""

    command: str
    started: str
    machine: Mapping[str, Any]
    versions: Mapping[str, str]
    settings: Mapping[str, Any]
    phases: Mapping[str, float]
    notes: Sequence[str]


CASE_HEADER = [
    "model",
    "config",
    "tuner",
    "mbs cap",
    "wall time",
    "trials (outcomes)",
    "pick",
    "own metric (samples/s)",
    "re-measured median (samples/s)",
    "measurements (in order)",
]
RATIO_HEADER = ["model", "config", "throughput ours/native", "wall time ours/native"]


def markdown(cases: Sequence[CaseResult], context: ReportContext) -> str:
    """The report as Markdown."""
    machine = context.machine
    lines = [
        "# Side by side with DeepSpeed's autotuner, end to end",
        "",
        f"Command: `{context.command}`",
        "",
        f"Started {context.started} on {machine['cpu']}, {machine['cores']} cores, "
        f"{_number(machine.get('memory_gib'))} GiB; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in machine['load_average'])}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in context.versions.items()) + ".",
        "",
        "Settings: " + ", ".join(f"{k} {v}" for k, v in context.settings.items()) + ".",
        "",
        "## Per tuner",
        "",
        *markdown_table(CASE_HEADER, [row for case in cases for row in case_rows(case)]),
        "",
        "## Ratios",
        "",
        *markdown_table(
            RATIO_HEADER,
            [
                [c.model.name, c.config, _ratio(c.throughput_ratio), _ratio(c.wall_ratio)]
                for c in cases
            ],
        ),
        "",
        "## Phases",
        "",
        *markdown_table(
            ["phase", "wall time"], [[k, format_duration(v)] for k, v in context.phases.items()]
        ),
    ]
    all_notes = [
        *context.notes,
        *(f"{c.model.name}/{c.config}: {n}" for c in cases for n in c.notes),
    ]
    for case in cases:
        for tool in TOOLS:
            all_notes += [
                f"{case.model.name}/{case.config}/{tool}: {n}" for n in case.runs[tool].notes
            ]
    if all_notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in all_notes)]
    return "\n".join(lines) + "\n"


def report_json(cases: Sequence[CaseResult], context: ReportContext) -> dict[str, Any]:
    """The report as one JSON document."""
    return {
        "command": context.command,
        "started": context.started,
        "machine": dict(context.machine),
        "versions": dict(context.versions),
        "settings": dict(context.settings),
        "phases_s": dict(context.phases),
        "notes": list(context.notes),
        "cases": [case.to_json() for case in cases],
    }
