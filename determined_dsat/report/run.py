"""A run directory as the reports read it: its trials, measured configurations, the
winner and the baseline (never written to, never fed back into a search)."""

from __future__ import annotations

import pathlib
import statistics
from collections.abc import Mapping
from typing import Any

import attrs

from determined_dsat.errors import ConfigError
from determined_dsat.report.console import describe_trial, format_metric
from determined_dsat.space.metric import Metric
from determined_dsat.store import layout
from determined_dsat.store.run_dir import RunDirectory
from determined_dsat.trials.records import Outcome, TrialKind, TrialRecord, TrialResult, TrialSpec

OUTCOMES = tuple(o.value for o in Outcome)
KINDS = tuple(k.value for k in TrialKind)


def _num(value: Any, default: float | None = None) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else default


_TEXT = ("request_id", "kind", "status", "lineage_id", "parent_id", "detail", "confirms")
_INTS = {"trial_id": 0, "stage": 0, "mbs": 0, "gas": 1}


@attrs.frozen
class Trial:
    """One line of ``trials.jsonl``, read leniently (missing fields get defaults)."""

    trial_id: int
    request_id: str
    kind: str
    status: str
    stage: int
    mbs: int
    gas: int
    overwrites: Mapping[str, Any]
    metrics: Mapping[str, Any]
    duration_s: float | None
    lineage_id: str | None
    parent_id: str | None
    detail: str | None
    finished_at: float | None
    confirms: str | None

    @classmethod
    def from_line(cls, d: Mapping[str, Any], index: int) -> Trial:
        """A trial from its JSON line; ``index`` (1-based) stands in for a missing id."""
        fields: dict[str, Any] = {k: None if d.get(k) is None else str(d[k]) for k in _TEXT}
        for key, default in _INTS.items():
            value = _num(d.get(key))
            fields[key] = (index if key == "trial_id" else default) if value is None else int(value)
        for key in ("overwrites", "metrics"):
            fields[key] = dict(d[key]) if isinstance(d.get(key), Mapping) else {}
        fields.update(duration_s=_num(d.get("duration_s")), finished_at=_num(d.get("finished_at")))
        fields["request_id"] = fields["request_id"] or f"line-{index}"
        fields["kind"] = fields["kind"] or TrialKind.SEARCH.value
        fields["status"] = fields["status"] or "unknown"
        if fields["kind"] == TrialKind.CONFIRM.value:  # older lines: the parent is the target
            fields["confirms"] = fields["confirms"] or fields["parent_id"]
        return cls(**fields)

    @property
    def ok(self) -> bool:
        return self.status == Outcome.OK.value

    def value(self, metric: Metric) -> float | None:
        """The raw metric value of a successful trial, or None."""
        if not self.ok or metric.score_of(self.metrics) is None:
            return None
        return float(self.metrics[metric.value])

    @property
    def zero(self) -> dict[str, Any]:
        """The trial's ``zero_optimization`` overwrite (the stage alone when absent)."""
        zero = self.overwrites.get("zero_optimization")
        return dict(zero) if isinstance(zero, Mapping) else {"stage": self.stage}

    def zero_knobs(self) -> dict[str, Any]:
        """ZeRO knobs other than the stage, nested keys joined with dots."""
        out: dict[str, Any] = {}

        def walk(node: Mapping[str, Any], prefix: str) -> None:
            for key, value in node.items():
                if isinstance(value, Mapping):
                    walk(value, f"{prefix}{key}.")
                elif prefix or key != "stage":
                    out[prefix + str(key)] = value

        walk(self.zero, "")
        return out

    def describe(self) -> str:
        """E.g. ``z2 mbs=16 gas=1 overlap_comm=True``, as the console summary writes it."""
        kind = TrialKind(self.kind) if self.kind in KINDS else TrialKind.SEARCH
        spec = TrialSpec(self.request_id, kind, self.mbs, self.gas, zero=self.zero)
        return describe_trial(TrialRecord(spec, TrialResult(Outcome.OK), self.trial_id))


@attrs.frozen
class Measured:
    """A search trial's configuration with every measurement of it (confirmations too)."""

    trial: Trial
    value: float | None
    """The median raw metric over its successful measurements."""
    score: float
    """The median score over all measurements, a failed one counting as ``-inf``."""
    runs: int
    failed: int
    confirmed: bool


@attrs.frozen
class Run:
    """A run directory as read now, with the metric it was searched for."""

    path: pathlib.Path
    metric: Metric
    trials: tuple[Trial, ...]
    settings: Mapping[str, Any]
    best_config_path: pathlib.Path | None
    running: bool
    ds_config_name: str
    warnings: tuple[str, ...] = ()
    """What is wrong with the run directory, e.g. a best pair that disagrees."""

    @property
    def report_dir(self) -> pathlib.Path:
        return self.path / layout.REPORT_DIR

    def of_kind(self, kind: TrialKind) -> list[Trial]:
        return [t for t in self.trials if t.kind == kind.value]

    @property
    def baseline(self) -> Trial | None:
        """The measurement of the user's own ds_config (the last one, if several)."""
        found = self.of_kind(TrialKind.BASELINE)
        return found[-1] if found else None

    def measured(self, trial: Trial) -> Measured:
        """A search trial with its confirmations (the search's own median rule)."""
        again = self.of_kind(TrialKind.CONFIRM)
        runs = [trial, *(t for t in again if t.confirms == trial.request_id)]
        scores = [self.metric.score_of(t.metrics) if t.ok else None for t in runs]
        raw = [v for v in (t.value(self.metric) for t in runs) if v is not None]
        score = statistics.median(float("-inf") if s is None else s for s in scores)
        value = statistics.median(raw) if raw else None
        failed = sum(s is None for s in scores)
        return Measured(trial, value, score, len(runs), failed, len(runs) > 1)

    def candidates(self) -> list[Measured]:
        """Every successful search trial, measured; best first (ties: finished first)."""
        found = [self.measured(t) for t in self.of_kind(TrialKind.SEARCH)]
        ranked = [m for m in found if m.trial.value(self.metric) is not None]
        return sorted(ranked, key=lambda m: (-m.score, m.trial.trial_id))

    def winner(self) -> Measured | None:
        """The confirmed winner (best median among re-measured configs) when there are
        confirmations, else the best single search trial; as the search itself picks it."""
        ranked = self.candidates()
        confirmed = [m for m in ranked if m.confirmed]
        pool = confirmed or [m for m in ranked if m.value is not None]
        return pool[0] if pool and pool[0].value is not None else None

    def best_per_stage(self) -> dict[int, Measured]:
        """The best configuration of each ZeRO stage (the overall winner for its stage)."""
        win = self.winner()
        out = {} if win is None else {win.trial.stage: win}
        for m in self.candidates():
            if m.value is not None:
                out.setdefault(m.trial.stage, m)
        return dict(sorted(out.items()))

    def best_so_far(self) -> list[tuple[Trial, float]]:
        """Successful search trials in completion order, each with the best value so far."""
        out: list[tuple[Trial, float]] = []
        for t in self.of_kind(TrialKind.SEARCH):
            if (v := t.value(self.metric)) is not None:
                better = not out or self.metric.score(v) > self.metric.score(out[-1][1])
                out.append((t, v if better else out[-1][1]))
        return out

    def fmt(self, value: float) -> str:
        return format_metric(self.metric, value)


def _ds_config_name(settings: Mapping[str, Any]) -> str:
    """``your ds_config.json``, named after the experiment's ``deepspeed_config``."""
    try:
        import yaml

        with open(str(settings["config_path"])) as f:
            name = yaml.safe_load(f)["hyperparameters"]["deepspeed_config"]
        return f"your {pathlib.PurePath(str(name)).name}"
    except Exception:
        return "your ds_config"


def load_run(path: pathlib.Path, metric: Metric | None = None) -> Run:
    """Read a run directory; raises ``ConfigError`` when it holds no ``trials.jsonl``."""
    rd = RunDirectory(path)
    if not rd.path.is_dir():
        raise ConfigError(f"{path}: no such run directory")
    if not rd.trials_path.is_file():
        raise ConfigError(f"{path}: no trials.jsonl; is this a dsat run directory?")
    lines = rd.read_trials()
    try:
        settings = rd.read_settings() or {}
    except ConfigError:  # torn by a crash: the report still stands without it
        settings = {}
    names = {m.value: m for m in Metric}
    metric = metric or names.get(str(settings.get("metric")), Metric.THROUGHPUT)
    trials = tuple(Trial.from_line(d, i + 1) for i, d in enumerate(lines))
    best = rd.best_config_path if rd.best_config_path.is_file() else None
    warnings: list[str] = []
    try:
        rd.read_best()
    except ConfigError as exc:
        warnings.append(str(exc))
    name = _ds_config_name(settings)
    return Run(rd.path, metric, trials, settings, best, rd.in_use(), name, tuple(warnings))


# -- numbers -------------------------------------------------------------------------------


def speedup(metric: Metric, best: float, baseline: float) -> float:
    """How many times better ``best`` is than ``baseline`` (see ``Metric.speedup``)."""
    return metric.speedup(best, baseline)
