"""The report's PNG plots, drawn with matplotlib's Agg renderer (no window, no pyplot).

Each plot is returned as PNG bytes; axes use the units ``console.format_metric`` uses
(samples/s, TFLOP/s, ms), so the numbers on the axes match the summary.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from determined_dsat.report.run import Run, Trial
from determined_dsat.space.metric import Metric
from determined_dsat.trials.records import TrialKind

STAGE_COLOURS = {0: "#4c72b0", 1: "#dd8452", 2: "#55a868", 3: "#8172b3"}
FAILURES = {  # status: (marker, colour, legend label)
    "oom": ("x", "#c0392b", "out of memory"),
    "error": ("D", "#7f3c8d", "crashed"),
    "timeout": ("v", "#e67e22", "timed out"),
}
BASELINE_COLOUR = "#222222"
WINNER_COLOUR = "#f1c40f"
BAND = 0.08
"""Height of the failure band at the bottom of the metric plot, as a fraction of the axes."""

_NAMES = {
    Metric.THROUGHPUT: "Throughput",
    Metric.FLOPS_PER_GPU: "FLOPS per GPU",
    Metric.LATENCY: "Latency per step",
    Metric.FORWARD: "Forward time per step",
    Metric.BACKWARD: "Backward time per step",
}
_FLOP_UNITS = ((1e15, "PFLOP/s"), (1e12, "TFLOP/s"), (1e9, "GFLOP/s"), (1e6, "MFLOP/s"))


def metric_axis(metric: Metric, values: Sequence[float]) -> tuple[float, str]:
    """``(scale, axis label)``: plot ``value * scale`` under a label naming the unit."""
    name = _NAMES[metric]
    if metric is Metric.THROUGHPUT:
        return 1.0, f"{name} (samples/s)"
    if metric is Metric.FLOPS_PER_GPU:
        top = max((abs(v) for v in values), default=0.0)
        for scale, unit in _FLOP_UNITS:
            if top >= scale:
                return 1.0 / scale, f"{name} ({unit})"
        return 1.0, f"{name} (FLOP/s)"
    return 1000.0, f"{name} (ms)"


def _better(metric: Metric) -> str:
    return " (lower is better)" if metric.smaller_is_better else " (higher is better)"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _number(value: float, _pos: Any = None) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _empty(fig: Figure, title: str, why: str) -> bytes:
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_axis_off()
    ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=13, transform=ax.transAxes)
    return _png(fig)


def _winner_label(run: Run, value: float, runs: int) -> str:
    extra = f", median of {runs}" if runs > 1 else ""
    return f"best: {run.fmt(value)}{extra}"


def _legend(fig: Figure, handles: dict[str, Any]) -> None:
    if handles:
        ncol = min(len(handles), 4)
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=ncol)


def metric_vs_mbs(run: Run) -> bytes:
    """The metric against micro-batch size, one panel per ZeRO stage; failed trials sit
    in a band along the bottom, the baseline and the winner are highlighted."""
    metric, search = run.metric, run.of_kind(TrialKind.SEARCH)
    confirms, base, win = run.of_kind(TrialKind.CONFIRM), run.baseline, run.winner()
    shown = search + confirms + ([base] if base else [])
    stages = sorted({t.stage for t in shown})
    title = f"{_NAMES[metric]} by micro-batch size and ZeRO stage{_better(metric)}"
    if not stages:
        return _empty(Figure(figsize=(8, 4.5)), title, "No search trial has finished yet.")
    values = [v for v in (t.value(metric) for t in shown) if v is not None]
    scale, ylabel = metric_axis(metric, values)
    fig = Figure(figsize=(min(4.2 * len(stages) + 1.0, 16.0), 5.2), layout="constrained")
    axes = fig.subplots(1, len(stages), sharey=True, squeeze=False)[0]
    handles: dict[str, Any] = {}
    mbs_all = [t.mbs for t in shown if t.mbs > 0]
    for ax, stage in zip(axes, stages):
        colour = STAGE_COLOURS.get(stage, "#555555")
        ax.set_title(f"ZeRO stage {stage}")
        ax.set_xlabel("Micro-batch size per GPU")
        ax.grid(True, alpha=0.3)
        band = ax.get_xaxis_transform()
        ax.add_patch(Rectangle((0, 0), 1, BAND, transform=ax.transAxes, color="#999999",
                               alpha=0.12, zorder=0, linewidth=0))  # fmt: skip
        ax.text(0.01, BAND / 2, "failed", transform=ax.transAxes, va="center", fontsize=8,
                color="#777777", style="italic")  # fmt: skip
        ok = _points(search, stage, metric, scale)
        if ok:
            ax.scatter(*zip(*ok), s=36, color=colour, alpha=0.8, zorder=3)
            handles["succeeded (colour: ZeRO stage)"] = Line2D(
                [], [], marker="o", linestyle="", color="#888888"
            )
        again = _points(confirms, stage, metric, scale)
        if again:
            h = ax.scatter(*zip(*again), s=70, facecolors="none", edgecolors=colour, zorder=3)
            handles["re-measurement"] = h
        for status, (marker, fail_colour, label) in FAILURES.items():
            xs = [t.mbs for t in search + confirms if t.stage == stage and t.status == status]
            if xs:
                y = [BAND / 2] * len(xs)
                h = ax.scatter(xs, y, marker=marker, s=50, color=fail_colour, transform=band,
                               zorder=4, clip_on=False)  # fmt: skip
                handles[label] = h
        if base is not None and base.stage == stage:
            raw = base.value(metric)
            bx, by, tr = base.mbs, (BAND / 2 if raw is None else raw * scale), band
            if raw is not None:
                tr = ax.transData
            h = ax.scatter([bx], [by], marker="P", s=160, color=BASELINE_COLOUR, transform=tr,
                           zorder=5, edgecolors="white")  # fmt: skip
            handles["your ds_config" + ("" if raw is not None else f" ({base.status})")] = h
        if win is not None and win.value is not None and win.trial.stage == stage:
            wx, wy = win.trial.mbs, win.value * scale
            h = ax.scatter([wx], [wy], marker="*", s=420, color=WINNER_COLOUR,
                           edgecolors="black", linewidths=0.8, zorder=6)  # fmt: skip
            handles["best configuration"] = h
        _mbs_axis(ax, mbs_all)
        if win is not None and win.value is not None and win.trial.stage == stage:
            _label_winner(ax, _winner_label(run, win.value, win.runs), win.trial.mbs, wy)
    base_raw = None if base is None else base.value(metric)
    if base_raw is not None:
        for ax in axes:
            ax.axhline(base_raw * scale, color=BASELINE_COLOUR, linestyle="--", linewidth=1)
        label = f"your ds_config: {run.fmt(base_raw)}"
        handles[label] = Line2D([], [], color=BASELINE_COLOUR, linestyle="--")
    _value_limits(axes[0], values, scale)
    axes[0].set_ylabel(ylabel)
    axes[0].yaxis.set_major_formatter(FuncFormatter(_number))
    fig.suptitle(title, fontsize=14)
    _legend(fig, handles)
    return _png(fig)


def _points(
    trials: Sequence[Trial], stage: int, metric: Metric, scale: float
) -> list[tuple[int, float]]:
    """``(mbs, scaled value)`` of the successful trials of one stage."""
    values = [(t.mbs, t.value(metric)) for t in trials if t.stage == stage]
    return [(mbs, v * scale) for mbs, v in values if v is not None]


def _label_winner(ax: Any, text: str, x: float, y: float) -> None:
    """Label the winner above its star, kept inside the panel."""
    frac = ax.transAxes.inverted().transform(ax.transData.transform((x, y)))[0]
    ha = "right" if frac > 0.65 else "left" if frac < 0.35 else "center"
    dx = {"right": 8, "left": -8, "center": 0}[ha]
    ax.annotate(text, (x, y), xytext=(dx, 14), textcoords="offset points", ha=ha, fontsize=9,
                fontweight="bold", zorder=7, bbox={"boxstyle": "round,pad=0.2", "fc": "white",
                                                   "ec": "#cccccc", "alpha": 0.9})  # fmt: skip


def _mbs_axis(ax: Any, mbs: list[int]) -> None:
    if mbs and max(mbs) / min(mbs) > 16:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if mbs:
        lo, hi = min(mbs), max(mbs)
        pad = 0.0 if hi > lo else 1.0
        if ax.get_xscale() == "log":
            ax.set_xlim(lo / 1.3, hi * 1.3)
        else:
            ax.set_xlim(lo - pad - 0.06 * (hi - lo) - 0.5, hi + pad + 0.06 * (hi - lo) + 0.5)


def _value_limits(ax: Any, values: Sequence[float], scale: float) -> None:
    """Leave the failure band at the bottom free of successful points."""
    if not values:
        ax.set_ylim(0, 1)
        return
    lo, hi = min(values) * scale, max(values) * scale
    span = hi - lo or abs(hi) * 0.2 or 1.0
    ax.set_ylim(lo - span * 0.25, hi + span * 0.15)


def _best_so_far(
    run: Run, x_of: Callable[[Trial], float], xlabel: str, title: str, integer_x: bool = False
) -> bytes:
    """The best-so-far step line, every successful search trial as a dot, the baseline as a
    dashed line and, when the winner was re-measured, its confirmed median as a star."""
    metric, win = run.metric, run.winner()
    points = [(x_of(t), t.value(metric) or 0.0, best) for t, best in run.best_so_far()]
    fig = Figure(figsize=(7.2, 4.4), layout="constrained")
    if not points:
        return _empty(fig, title, "No successful search trial yet.")
    base = run.baseline
    base_raw = None if base is None else base.value(metric)
    values = [p[1] for p in points] + ([base_raw] if base_raw is not None else [])
    scale, ylabel = metric_axis(metric, values)
    ax = fig.add_subplot()
    xs, last = [p[0] for p in points], points[-1][2] * scale
    x_end = max([*xs, *(x_of(t) for t in run.trials)])
    ax.scatter(xs, [p[1] * scale for p in points], s=18, color="#7f8c8d", alpha=0.6,
               label="each successful search trial", zorder=2)  # fmt: skip
    ax.step([*xs, x_end], [p[2] * scale for p in points] + [last], where="post",
            color="#2c7fb8", linewidth=2.2, label="best so far", zorder=3)  # fmt: skip
    ax.annotate(run.fmt(points[-1][2]), (x_end, last), xytext=(-4, 6),
                textcoords="offset points", ha="right", va="bottom", fontsize=9)  # fmt: skip
    if win is not None and win.confirmed and win.value is not None:
        values.append(win.value)
        ax.scatter([x_end], [win.value * scale], marker="*", s=260, color=WINNER_COLOUR,
                   edgecolors="black", linewidths=0.8, zorder=5,
                   label=f"confirmed best, median of {win.runs}: {run.fmt(win.value)}")  # fmt: skip
    if base_raw is not None:
        ax.axhline(base_raw * scale, color=BASELINE_COLOUR, linestyle="--", linewidth=1.2,
                   label=f"your ds_config: {run.fmt(base_raw)}")  # fmt: skip
    lo, hi = min(values) * scale, max(values) * scale
    span = hi - lo or abs(hi) * 0.2 or 1.0
    ax.set_ylim(lo - 0.08 * span, hi + 0.15 * span)
    ax.set_title(title, fontsize=13)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.yaxis.set_major_formatter(FuncFormatter(_number))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _png(fig)


def best_vs_trial(run: Run) -> bytes:
    """The best metric found so far against the trial number (completion order)."""
    title = f"Best {_NAMES[run.metric].lower()} found so far, by trial{_better(run.metric)}"
    xlabel = "Trial number (order finished)"
    return _best_so_far(run, lambda t: float(t.trial_id), xlabel, title, integer_x=True)


def _time_unit(span_s: float) -> tuple[float, str]:
    if span_s < 120:
        return 1.0, "seconds"
    if span_s < 2 * 3600:
        return 60.0, "minutes"
    return 3600.0, "hours"


def best_vs_time(run: Run) -> bytes:
    """The best metric found so far against wall time since the first trial finished."""
    title = f"Best {_NAMES[run.metric].lower()} found so far, over time{_better(run.metric)}"
    times = [t.finished_at for t in run.trials if t.finished_at is not None]
    if not times:
        return _empty(Figure(figsize=(7.2, 4.4)), title, "No finish times recorded.")
    t0 = min(times)
    div, unit = _time_unit(max(times) - t0)
    xlabel = f"Time since the first trial finished ({unit})"
    return _best_so_far(run, lambda t: ((t.finished_at or t0) - t0) / div, xlabel, title)


PLOTS: dict[str, Callable[[Run], bytes]] = {
    "metric_vs_mbs.png": metric_vs_mbs,
    "best_vs_trial.png": best_vs_trial,
    "best_vs_time.png": best_vs_time,
}
"""The report's plots by file name, in the order the page shows them."""


def render_all(run: Run) -> dict[str, bytes]:
    """Every plot as PNG bytes, by file name."""
    return {name: draw(run) for name, draw in PLOTS.items()}
