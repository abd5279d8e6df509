"""``dsat report RUN_DIR``: a summary, a trials CSV, plots and one HTML page of a run.

Works on any backend's run directory, finished or still being written: it only reads the
store (``run.py``) and writes everything under ``RUN_DIR/report/``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import attrs

from determined_dsat.errors import ConfigError
from determined_dsat.report.run import Run, load_run
from determined_dsat.space.metric import Metric

PROG = "dsat report"


# -- trials.csv ----------------------------------------------------------------------------


BASE_COLUMNS = (
    "trial_id", "request_id", "kind", "status", "stage", "mbs", "gas", "train_batch_size",
    "duration_s", "finished_at", "lineage_id", "parent_id", "confirms", "detail",
)  # fmt: skip


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def trials_csv(run: Run) -> str:
    """One row per trial: the fixed columns, then ``metrics.<name>``, then ``zero.<knob>``."""
    metric_keys = sorted({k for t in run.trials for k in t.metrics})
    zero_keys = sorted({k for t in run.trials for k in t.zero_knobs()})
    header = [*BASE_COLUMNS, *(f"metrics.{k}" for k in metric_keys)]
    header += [f"zero.{k}" for k in zero_keys]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for t in run.trials:
        fields = attrs.asdict(t, recurse=False)
        fields["train_batch_size"] = t.overwrites.get("train_batch_size")
        knobs = t.zero_knobs()
        row = [_cell(fields[c]) for c in BASE_COLUMNS]
        row += [_cell(t.metrics.get(k)) for k in metric_keys]
        writer.writerow(row + [_cell(knobs.get(k)) for k in zero_keys])
    return out.getvalue()


# -- writing -------------------------------------------------------------------------------


def _write(path: pathlib.Path, data: bytes) -> None:
    """Replace ``path`` atomically (a browser never sees half a page), readable by all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_report(run: Run) -> tuple[pathlib.Path, str, list[str]]:
    """Write ``summary.md``, ``trials.csv``, the plots and ``index.html``; returns the
    report folder, the summary and any warnings (e.g. plots skipped without matplotlib)."""
    from determined_dsat.report import html

    out = run.report_dir
    summary = html.summary_markdown(run)
    _write(out / "summary.md", summary.encode())
    _write(out / "trials.csv", trials_csv(run).encode())
    warnings: list[str] = []
    images: dict[str, bytes] = {}
    try:
        from determined_dsat.report import plots
    except ImportError as e:
        warnings.append(f"plots skipped: {e} (pip install 'determined_dsat[report]')")
    else:
        images = plots.render_all(run)
    for name, png in images.items():
        _write(out / name, png)
    _write(out / "index.html", html.render_page(run, summary, images).encode())
    return out, summary, warnings


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see '{PROG} --help')")


def main(argv: Sequence[str]) -> int:
    """``dsat report RUN_DIR``; returns 0, or 2 with one error line for a bad directory."""
    parser = _Parser(
        prog=PROG,
        description="Summarize a dsat run directory (finished or still running): writes "
        "summary.md, trials.csv, PNG plots and a self-contained index.html to RUN_DIR/report/.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the search's run directory")
    parser.add_argument("--metric", choices=[m.value for m in Metric],
                        help="metric to rank by (default: the one the search used)")  # fmt: skip
    try:
        a = parser.parse_args(list(argv))
        run = load_run(pathlib.Path(a.run_dir), None if a.metric is None else Metric(a.metric))
        out, summary, warnings = write_report(run)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except (ConfigError, OSError) as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    for w in [*run.warnings, *warnings]:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    print(summary)
    print(f"Report written to {out}/ (open {out / 'index.html'})")
    return 0
