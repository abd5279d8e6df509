"""The report's documents: the Markdown summary (``summary.md``, also printed) and one
self-contained HTML page: inline CSS, plots as ``data:`` URIs, no scripts and no external
requests (a Content-Security-Policy forbids them)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence

from determined_dsat.report.run import KINDS, OUTCOMES, Measured, Run, Trial, speedup
from determined_dsat.trials.records import TrialKind

CAPTIONS = {
    "metric_vs_mbs.png": "The metric of every trial by micro-batch size, one panel per ZeRO "
    "stage. Failed trials are marked in the grey band at the bottom, at their micro-batch "
    "size; the star is the best configuration, the dark plus your own ds_config.",
    "best_vs_trial.png": "The best result found so far after each trial.",
    "best_vs_time.png": "The best result found so far against wall time.",
}

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1d2733; margin: 0 auto; max-width: 1180px; padding: 16px 24px 48px; }
h1 { font-size: 26px; margin: 8px 0 12px; }
h2 { font-size: 19px; margin: 28px 0 8px; border-bottom: 1px solid #dde3ea; }
code, .mono { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #dde3ea; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f5f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.trials { font-size: 13px; }
.trials td.knobs { max-width: 360px; word-break: break-word; }
.st-ok { background: #d8f3dc; } .st-oom { background: #f8d7da; }
.st-error { background: #f3d6f0; } .st-timeout { background: #fde8c8; }
.st-invalid, .st-cancelled { background: #e9ecef; }
tr.winner td { font-weight: 600; } tr.winner td:first-child { border-left: 5px solid #f1c40f; }
tr.baseline td:first-child { border-left: 5px solid #222; }
figure { margin: 18px 0; } figure img { width: 100%; border: 1px solid #dde3ea; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
figcaption { color: #52606d; font-size: 13px; }
.note { color: #52606d; font-size: 13px; }
"""


# -- summary.md ------------------------------------------------------------------------------


def _stage_row(run: Run, stage: int, best: Measured | None, star: bool) -> list[str]:
    at = [t for t in run.of_kind(TrialKind.SEARCH) if t.stage == stage]
    counts = [sum(t.status == s for t in at) for s in ("ok", "oom")]
    counts.append(len(at) - sum(counts))
    if best is None or best.value is None:
        cells = ["-", "-", "no successful trial", "-", "-"]
    else:
        t = best.trial
        cells = [str(t.mbs), str(t.gas), run.fmt(best.value), str(best.runs), f"#{t.trial_id}"]
    return [f"z{stage}" + (" (best)" if star else ""), *cells, *map(str, counts)]


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    head, *body = rows
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]


def _pair(run: Run, a: float, b: float) -> str:
    """``(1234.0 vs 534.0 samples/s)``; both units kept when they differ."""
    (na, ua), (nb, ub) = (run.fmt(v).split(" ", 1) for v in (a, b))
    return f"({na} vs {nb} {ub})" if ua == ub else f"({na} {ua} vs {nb} {ub})"


def speedup_line(run: Run, win: Measured | None) -> str:
    """How the winner compares with the user's own ds_config, in one sentence."""
    base, name = run.baseline, run.ds_config_name
    title = name[0].upper() + name[1:]
    if base is None:
        return f"{title} was not measured in this run (no baseline trial)."
    raw = base.value(run.metric)
    if raw is None:
        detail = f": {base.detail}" if base.detail else ""
        why = {"oom": "ran out of memory", "ok": f"reported no {run.metric.value}"}
        what = why.get(base.status, f"failed ({base.status}{detail})")
        return f"{title} {what} (trial #{base.trial_id}); no speedup to report."
    if win is None or win.value is None:
        return f"{title}: {run.fmt(raw)}; no searched configuration has succeeded yet."
    ratio, pair = speedup(run.metric, win.value, raw), _pair(run, win.value, raw)
    if ratio >= 1:
        return f"**{ratio:.2f}× faster than {name}** {pair}."
    return f"{ratio:.2f}× the speed of {name}: the search did not beat it {pair}."


def _state(run: Run) -> str:
    cap, n = run.settings.get("max_trials"), len(run.trials)
    of = f" of at most {cap}" if isinstance(cap, int) else ""
    if run.running:
        return f"still running ({n} trials finished{of})"
    if isinstance(cap, int) and n >= cap:
        return f"finished ({n} trials)"
    return f"not running ({n} trials finished{of}; stopped, or not started yet)"


def summary_markdown(run: Run) -> str:
    """The report's summary: metric, best config overall and per stage, speedup, counts."""
    m = run.metric
    direction = "smaller is better" if m.smaller_is_better else "larger is better"
    info = [f"Run directory: {run.path}", f"Metric: {m.value} ({direction})"]
    lines = ["# DeepSpeed autotuning report", "", *(f"- {x}" for x in info)]
    lines += [f"- Search: {_state(run)}", "", "## Best configuration", ""]
    win = run.winner()
    if win is None or win.value is None:
        lines.append("No configuration has succeeded yet.")
    else:
        t = win.trial
        lines.append(f"**{t.describe()}**: {run.fmt(win.value)} (trial #{t.trial_id})")
        failed = f", {win.failed} of them failed" if win.failed else ""
        how = "Measured once (no confirmation trials in this run)."
        if win.confirmed:
            how = f"Confirmed: {run.fmt(win.value)} is the median of {win.runs} measurements"
            how += f"{failed}; the winner was picked among re-measured configurations."
        lines += ["", how]
    lines += ["", speedup_line(run, win), ""]
    shown = run.best_config_path if run.best_config_path else "not written yet"
    lines += [f"best_ds_config.json: {shown}", ""]
    stages = sorted({t.stage for t in run.of_kind(TrialKind.SEARCH)})
    if stages:
        per = run.best_per_stage()
        head = ["stage", "mbs", "gas", m.value, "measurements", "trial", "ok", "oom", "failed"]
        marked = [win is not None and per.get(s) == win for s in stages]
        rows = [head] + [_stage_row(run, s, per.get(s), w) for s, w in zip(stages, marked)]
        lines += ["## Best per ZeRO stage", "", *_table(rows), ""]
        lines += ["(failed counts crashes, timeouts, invalid and cancelled trials)", ""]
    kinds = [k for k in KINDS if run.of_kind(TrialKind(k))]
    kinds += sorted({t.kind for t in run.trials} - set(KINDS))
    statuses = [s for s in OUTCOMES if any(t.status == s for t in run.trials)]
    statuses += sorted({t.status for t in run.trials} - set(OUTCOMES))
    rows = [["kind", *statuses, "total"]]
    for kind in [*kinds, "all"]:
        these = [t for t in run.trials if kind in ("all", t.kind)]
        rows.append([kind, *(str(sum(t.status == s for t in these)) for s in statuses)])
        rows[-1].append(str(len(these)))
    lines += ["## Trials by outcome", "", *_table(rows), ""]
    return "\n".join(lines)


# -- index.html ------------------------------------------------------------------------------


def _inline(text: str) -> str:
    """Escape one line of the summary, keeping its ``**bold**`` spans."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def summary_html(markdown: str) -> str:
    """The summary as HTML; it understands the small Markdown subset the summary uses
    (headings, bullets, pipe tables, bold, paragraphs) and escapes everything else."""
    out: list[str] = []
    table: list[list[str]] = []
    bullets: list[str] = []

    def flush() -> None:
        if bullets:
            out.append("<ul>" + "".join(f"<li>{_inline(b)}</li>" for b in bullets) + "</ul>")
            bullets.clear()
        if table:
            head, *body = table
            rows = ["<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"]
            for row in body:
                cells = "".join(f"<td>{_inline(c)}</td>" for c in row)
                rows.append(f"<tr>{cells}</tr>")
            out.append("<table class='summary'>" + "".join(rows) + "</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        if line.startswith("- "):
            bullets.append(line[2:])
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h2>{_inline(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    return "\n".join(out)


def _figure(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    caption = html.escape(CAPTIONS.get(name, name))
    alt = html.escape(name.removesuffix(".png").replace("_", " "))
    return (
        f"<figure><img src='data:image/png;base64,{data}' alt='{alt}'>"
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _knobs(trial: Trial) -> str:
    return " ".join(f"{k}={v}" for k, v in trial.zero_knobs().items())


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.1f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


def trials_table(run: Run) -> str:
    """Every trial in completion order; outcome cells coloured, winner and baseline marked."""
    win = run.winner()
    base = run.baseline
    head = ["#", "kind", "outcome", "stage", "mbs", "gas", run.metric.value, "ZeRO knobs",
            "duration", "detail"]  # fmt: skip
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for t in run.trials:
        value = t.value(run.metric)
        role = ""
        if win is not None and t.request_id == win.trial.request_id:
            role = "winner"
        elif base is not None and t.request_id == base.request_id:
            role = "baseline"
        kind = t.kind + (f" of #{_trial_no(run, t.confirms)}" if t.confirms else "")
        status = re.sub(r"[^a-z]", "", t.status.lower())
        cells = [
            f"<td class='num'>{t.trial_id}</td>",
            f"<td>{html.escape(kind)}</td>",
            f"<td class='st-{status}'>{html.escape(t.status)}</td>",
            f"<td class='num'>{t.stage}</td>",
            f"<td class='num'>{t.mbs}</td>",
            f"<td class='num'>{t.gas}</td>",
            f"<td class='num'>{'' if value is None else html.escape(run.fmt(value))}</td>",
            f"<td class='knobs mono'>{html.escape(_knobs(t))}</td>",
            f"<td class='num'>{_duration(t.duration_s)}</td>",
            f"<td>{html.escape(t.detail or '')}</td>",
        ]
        rows.append(f"<tr class='{role}'>" + "".join(cells) + "</tr>")
    return "<table class='trials'>" + "\n".join(rows) + "</table>"


def _trial_no(run: Run, request_id: str) -> str:
    for t in run.trials:
        if t.request_id == request_id:
            return str(t.trial_id)
    return "?"


def render_page(run: Run, summary_md: str, images: Mapping[str, bytes]) -> str:
    """The whole page: summary, plots and the trials table."""
    title = f"dsat report: {run.path.name}"
    shown = [_figure(name, png) for name, png in images.items()]
    figures = shown[0] + "<div class='pair'>" + "".join(shown[1:]) + "</div>" if shown else ""
    if not images:
        figures = "<p class='note'>Plots were skipped (matplotlib is not installed).</p>"
    legend = (
        "<p class='note'>Outcome colours: <span class='st-ok'>ok</span> "
        "<span class='st-oom'>oom</span> <span class='st-error'>error</span> "
        "<span class='st-timeout'>timeout</span> <span class='st-invalid'>invalid / cancelled"
        "</span>. A yellow edge marks the best configuration, a black edge your ds_config.</p>"
    )
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
{summary_html(summary_md)}
<h2>Plots</h2>
{figures}
<h2>All trials ({len(run.trials)})</h2>
{legend}
{trials_table(run)}
</body>
</html>
"""
