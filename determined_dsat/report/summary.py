"""The end-of-search summary: counts, the best configuration per ZeRO stage, the best
overall, where the files are, and how the winner compares with the user's ds_config."""

from __future__ import annotations

import math
import pathlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tabulate import tabulate

from determined_dsat.report.console import describe_trial, format_metric, metric_value
from determined_dsat.space.metric import Metric
from determined_dsat.store.run_dir import RunDirectory
from determined_dsat.trials.records import Outcome, TrialKind, TrialRecord
from determined_dsat.trials.search_outcome import SearchOutcome

_ALIGN = ("left", "left", "right", "right", "right", "right", "right", "right")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    text = tabulate(rows, headers=headers, tablefmt="plain", colalign=_ALIGN, disable_numparse=True)
    return [line.rstrip() for line in text.splitlines()]


def _ranked(records: Iterable[TrialRecord], metric: Metric) -> list[tuple[float, TrialRecord]]:
    out = []
    for r in records:
        if r.spec.kind is not TrialKind.SEARCH or r.result is None or not r.succeeded:
            continue
        score = metric.score_of(r.result.metrics)
        if score is not None:
            out.append((score, r))
    return out


def _key(item: tuple[float, TrialRecord]) -> tuple[float, float]:
    # Best score first; among equal scores the trial that finished first.
    score, record = item
    seq = record.finished_seq
    return (score, -(math.inf if seq is None else seq))


def best_record(records: Iterable[TrialRecord], metric: Metric) -> TrialRecord | None:
    """The successful search trial with the best metric, or None."""
    ranked = _ranked(records, metric)
    return max(ranked, key=_key)[1] if ranked else None


def best_by_stage(records: Iterable[TrialRecord], metric: Metric) -> dict[int, TrialRecord]:
    """The best successful search trial of each ZeRO stage that has one."""
    best: dict[int, tuple[float, TrialRecord]] = {}
    for item in _ranked(records, metric):
        stage = item[1].spec.stage
        if stage not in best or _key(item) > _key(best[stage]):
            best[stage] = item
    return {stage: item[1] for stage, item in sorted(best.items())}


# -- summary ---------------------------------------------------------------------------


def _outcome_counts(records: Iterable[TrialRecord]) -> str:
    counts: Counter[str] = Counter()
    for r in records:
        counts["running" if r.result is None else r.result.outcome.value] += 1
    order = [o.value for o in Outcome] + ["running"]
    return ", ".join(f"{counts[k]} {k}" for k in order if counts[k])


def render_summary(
    records: Sequence[TrialRecord],
    metric: Metric,
    best_config_path: pathlib.Path | None,
    best_metrics_path: pathlib.Path | None,
    recommended: TrialRecord | None = None,
    stages_asked: Sequence[int] = (),
    ended: str = "",
) -> str:
    """A plain-text end-of-search report: counts, best per ZeRO stage, overall best, files.

    ``recommended``: what the search recommends (its confirmed winner, or the baseline
    trial when nothing searched beat it); by default the best single search trial.
    ``stages_asked``: the ZeRO stages the search was to try; those it never tried are
    named with why (``ended``: the search's stop message)."""
    search = [r for r in records if r.spec.kind is TrialKind.SEARCH]
    profile = [r for r in records if r.spec.kind is TrialKind.PROFILE]
    direction = "smaller" if metric.smaller_is_better else "larger"
    lines = [f"DeepSpeed autotuning summary (metric: {metric.value}, {direction} is better)"]
    counts = f"Search trials: {len(search)}"
    if search:
        counts += f" ({_outcome_counts(search)})"
    if profile:
        counts += f"; profile trials: {len(profile)} ({_outcome_counts(profile)})"
    lines.append(counts)

    overall = best_record(records, metric) if recommended is None else recommended
    per_stage = best_by_stage(records, metric)
    if overall is not None and overall.spec.kind is TrialKind.SEARCH:
        per_stage[overall.spec.stage] = overall  # the confirmed winner stands for its stage
    stages = sorted({r.spec.stage for r in search})
    if stages:
        headers = ["", "stage", "mbs", "gas", metric.value, "trial", "oom", "error"]
        rows: list[list[str]] = []
        for stage in stages:
            at_stage = [r for r in search if r.spec.stage == stage and r.result is not None]
            ooms = sum(1 for r in at_stage if r.result and r.result.outcome is Outcome.OOM)
            errors = sum(
                1
                for r in at_stage
                if r.result and r.result.outcome in (Outcome.ERROR, Outcome.TIMEOUT)
            )
            best = per_stage.get(stage)
            value = None if best is None else metric_value(best, metric)
            if best is None or value is None:
                cells = ["-", "-", "no successful trial", "-"]
            else:
                cells = [
                    str(best.spec.mbs),
                    str(best.spec.gas),
                    format_metric(metric, value),
                    _trial_no(best),
                ]
            mark = "*" if best is not None and overall is not None and _same(best, overall) else ""
            rows.append([mark, f"z{stage}", *cells, str(ooms), str(errors)])
        lines.append("")
        lines.extend(_table(headers, rows))
        note = "error counts crashes and timeouts"
        starred = any(row[0] == "*" for row in rows)
        lines.append(f"({note}; * marks the overall best)" if starred else f"({note})")
    untried = sorted(set(stages_asked) - set(stages))
    if untried:
        names = ", ".join(f"z{s}" for s in untried)
        why = (
            "the trial budget ran out before the search reached them"
            if "budget" in ended or "time" in ended
            else "the search ruled them out: other stages fit and were expected to be faster"
        )
        lines.append(f"ZeRO stages asked for but never tried: {names} ({why}).")

    lines.append("")
    overall_value = None if overall is None else metric_value(overall, metric)
    baseline_ran = any(
        r.spec.kind is TrialKind.BASELINE and r.result is not None and r.succeeded for r in records
    )
    if (overall is None or overall_value is None) and baseline_ran:
        lines.append(
            "No searched configuration succeeded, and your ds_config.json (the baseline) "
            "breaks the search's batch constraints (--train-batch-size, --divisible-by, "
            "--max-mbs); no best ds_config was written."
        )
    elif overall is None or overall_value is None:
        lines.append("No configuration succeeded; no best ds_config was written.")
    else:
        own = overall.spec.kind is TrialKind.BASELINE
        what = "your own ds_config.json, " if own else ""
        lines.append(
            f"Best: {what}{describe_trial(overall)}: {format_metric(metric, overall_value)} "
            f"(trial {_trial_no(overall)})"
        )
        if own:
            lines.append("  No searched configuration beat your ds_config.json.")
        for label, path in (
            ("best_ds_config.json", best_config_path),
            ("best_ds_metrics.json", best_metrics_path),
        ):
            shown = path if path is not None else "(not written)"
            lines.append(f"  {label + ':':<22}{shown}")
    return "\n".join(lines) + "\n"


def _same(a: TrialRecord, b: TrialRecord) -> bool:
    return a.spec.request_id == b.spec.request_id


def _trial_no(record: TrialRecord) -> str:
    return "-" if record.finished_seq is None else f"#{record.finished_seq}"


def print_summary(metric: Metric, run_dir: RunDirectory, outcome: SearchOutcome) -> None:
    """Print the end-of-search table, then the baseline comparison and how the winner was
    chosen."""
    found = outcome.best is not None
    print(
        render_summary(
            outcome.records,
            metric,
            run_dir.best_config_path if found else None,
            run_dir.best_metrics_path if found else None,
            recommended=outcome.best,
            stages_asked=outcome.stages,
            ended=outcome.message,
        )
    )
    for line in verdict_lines(metric, outcome):
        print(line)
    print(f"Search ended: {outcome.message}. Run directory: {run_dir.path}")


def verdict_lines(metric: Metric, outcome: SearchOutcome) -> list[str]:
    """How the winner was confirmed and how it compares with the user's ds_config."""
    lines = []
    best_value = _value(outcome.best_metrics, metric.value)
    if outcome.measurements > 1 and best_value is not None:
        lines.append(
            f"Confirmed: the winner was re-measured; its median is "
            f"{format_metric(metric, best_value)} over {outcome.measurements} runs."
        )
    baseline = outcome.baseline
    if baseline is None or baseline.result is None:
        return lines
    if outcome.best is not None and _same(outcome.best, baseline):
        searched = _value(outcome.search_best_metrics, metric.value)
        text = (
            "nothing searched trained"
            if searched is None
            else (f"the best searched one ran {format_metric(metric, searched)}")
        )
        lines.append(
            f"No searched configuration beat your ds_config.json ({text}); "
            "best_ds_config.json is your own configuration."
        )
        return lines
    if not baseline.result.outcome.succeeded:
        lines.append(
            f"Your ds_config.json did not run as a baseline ({baseline.result.outcome.value})."
        )
        return lines
    base_value = _value(baseline.result.metrics, metric.value)
    if base_value is None or best_value is None or base_value <= 0 or best_value <= 0:
        return lines
    speedup = metric.speedup(best_value, base_value)
    best_text = format_metric(metric, best_value)
    base_text = format_metric(metric, base_value)
    verdict = "better" if speedup >= 1 else "worse"
    lines.append(f"{speedup:.2f}x {verdict} than your ds_config.json ({best_text} vs {base_text}).")
    return lines


def _value(metrics: Mapping[str, Any] | None, name: str) -> float | None:
    raw = None if metrics is None else metrics.get(name)
    return float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else None
