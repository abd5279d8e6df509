"""Start a search on the chosen backend and report how it ended."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from determined_dsat.errors import SearchError
from determined_dsat.report import console
from determined_dsat.report.run_dir import RunDirectory
from determined_dsat.runners.replay import ReplayExecutor, load_replay_source
from determined_dsat.runners.session import SearchOutcome, Session
from determined_dsat.settings import Backend, SearchSettings
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.experiment import Experiment

logger = logging.getLogger("determined_dsat")


def run_search(settings: SearchSettings, experiment: Experiment) -> int:
    """Run a search to its end; returns the process exit code (0 when a config was found)."""
    if settings.backend is Backend.REPLAY:
        return _run_replay(settings, experiment)
    if settings.backend is Backend.LOCAL:
        from determined_dsat.runners.local_search import run_local

        return run_local(settings, experiment)
    from determined_dsat.runners.cluster.submit import submit

    submit(settings, experiment)
    return 0


def _run_replay(settings: SearchSettings, experiment: Experiment) -> int:
    if settings.replay_source is None:
        raise SearchError("--backend replay needs --replay-source")
    source = load_replay_source(settings.replay_source, experiment.model_dir)

    def make_executor(space: ConfigSpace, _: RunDirectory) -> ReplayExecutor:
        def ds_config_of(hparams: Mapping[str, Any]) -> dict[str, Any]:
            return space.ds_config_from_hparams(hparams)

        return ReplayExecutor(source, ds_config_of)

    if settings.run_full_experiment:
        logger.warning("--run-full-experiment does nothing with --backend replay")
    session = Session(settings, experiment, make_executor)
    with log_to_run_dir(session.run_dir):
        outcome = session.run()
    print_summary(settings, session.run_dir, outcome)
    return 1 if outcome.failed else 0


@contextlib.contextmanager
def log_to_run_dir(run_dir: RunDirectory) -> Iterator[None]:
    """Send the package's log to ``dsat.log`` in the run directory for one search."""
    run_dir.path.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir.log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("determined_dsat")
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()


def print_summary(settings: SearchSettings, run_dir: RunDirectory, outcome: SearchOutcome) -> None:
    """The end-of-search table, then the baseline comparison and how the winner was chosen."""
    found = outcome.best is not None
    print(
        console.render_summary(
            outcome.records,
            settings.metric,
            run_dir.best_config_path if found else None,
            run_dir.best_metrics_path if found else None,
        )
    )
    for line in _verdict_lines(settings, outcome):
        print(line)
    print(f"Search ended: {outcome.message}. Run directory: {run_dir.path}", file=sys.stdout)


def _verdict_lines(settings: SearchSettings, outcome: SearchOutcome) -> list[str]:
    metric = settings.metric
    lines = []
    best_value = _value(outcome.best_metrics, metric.value)
    if outcome.measurements > 1 and best_value is not None:
        lines.append(
            f"Confirmed: the best configurations were re-measured; the winner's median is "
            f"{console.format_metric(metric, best_value)} over {outcome.measurements} runs."
        )
    baseline = outcome.baseline
    if baseline is None or baseline.result is None:
        return lines
    if not baseline.result.outcome.succeeded:
        lines.append(
            f"Your ds_config.json did not run as a baseline ({baseline.result.outcome.value})."
        )
        return lines
    base_value = _value(baseline.result.metrics, metric.value)
    if base_value is None or best_value is None or base_value <= 0 or best_value <= 0:
        return lines
    speedup = base_value / best_value if metric.smaller_is_better else best_value / base_value
    best_text = console.format_metric(metric, best_value)
    base_text = console.format_metric(metric, base_value)
    verdict = "better" if speedup >= 1 else "worse"
    lines.append(f"{speedup:.2f}x {verdict} than your ds_config.json ({best_text} vs {base_text}).")
    return lines


def _value(metrics: Mapping[str, Any] | None, name: str) -> float | None:
    raw = None if metrics is None else metrics.get(name)
    return float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else None
