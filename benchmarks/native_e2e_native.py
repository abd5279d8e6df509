"""Driving DeepSpeed's own autotuner (``deepspeed --autotuning tune``, DeepSpeed 0.19.8)
on this machine's CPU, and reading what it found.

The incantation (one slot, no hostfile, no pdsh)::

    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 PATH=<venv>/bin:$PATH \\
      deepspeed --autotuning tune --num_gpus 1 --master_port P \\
        train.py --deepspeed_config ds_config.json <script args>

with an ``autotuning`` section in ``ds_config.json`` (``enabled``, ``fast``, ``metric``,
``start_profile_step``/``end_profile_step``, ``max_train_micro_batch_size_per_gpu``,
absolute ``results_dir``/``exps_dir``) and ``zero_optimization.stage`` a list of stages.
Without ``/job/hostfile`` the launcher uses ``localhost`` with the CPU accelerator's
device count (1 here); each experiment is a new ``deepspeed --hostfile /job/hostfile
--include localhost:0 --master_port P+i`` process found on ``PATH``, given the
experiment's ds_config as base64 text after ``--deepspeed_config``. After each
experiment its scheduler runs ``pdsh ... pkill -f <experiment name>``; without pdsh
that raises ``FileNotFoundError`` in the experiment's thread, after the experiment has
finished, which is harmless (the traceback lands in the tuner's log).

What it leaves, under ``results_dir``: one folder per experiment (``exp.json``,
``ds_config.json``, ``cmd.txt``, ``stdout.log``, ``stderr.log`` and, when the run
succeeded, ``metrics.json``; the profiling run ``profile_model_info/model_info.json``),
``ds_config_optimal.json`` (its pick, autotuning section removed), ``cmd_optimal.txt``
and ``summary.txt``. An experiment counts as failed when any line of its ``stderr.log``
contains ``Error``, ``error`` or ``ERROR`` (DeepSpeed 0.19.8's ``search_error``), and its
pick is the successful experiment with the largest metric.
"""

from __future__ import annotations

import pathlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from benchmarks.native_e2e_records import Pick, read_json_or_none

PROFILE_EXPERIMENT = "profile_model_info"
OPTIMAL_CONFIG = "ds_config_optimal.json"
_ERROR_MARK = re.compile("Error|error|ERROR")
_OOM_MARKS = ("out of memory", "can't allocate memory", "MemoryError", "DefaultCPUAllocator")


@attrs.frozen
class NativeExperiment:
    """One experiment folder under DeepSpeed's ``results_dir``: ``error`` is the text after
    the first error mark in its ``stderr.log`` (None: no mark), ``metrics`` its
    ``metrics.json`` (None: not written)."""

    exp_id: int
    name: str
    ds_config: Mapping[str, Any]
    metrics: Mapping[str, Any] | None
    error: str | None

    @property
    def is_profile(self) -> bool:
        return self.name == PROFILE_EXPERIMENT

    @property
    def outcome(self) -> str:
        """``ok``, ``oom`` (an allocation failure in its log) or ``error``."""
        if self.error is None and (self.metrics is not None or self.is_profile):
            return "ok"
        text = self.error or ""
        return "oom" if any(mark in text for mark in _OOM_MARKS) else "error"


def native_ds_config(
    base: Mapping[str, Any],
    *,
    stages: Sequence[int],
    cap: int | None,
    start_profile_step: int,
    end_profile_step: int,
    results_dir: pathlib.Path,
    exps_dir: pathlib.Path,
    metric: str = "throughput",
) -> dict[str, Any]:
    """The user's ds_config for ``deepspeed --autotuning``: ``base`` with the stages to
    search and an ``autotuning`` section in fast mode; ``cap`` None keeps DeepSpeed's
    default micro-batch cap."""
    section: dict[str, Any] = {
        "enabled": True,
        "fast": True,
        "metric": metric,
        "start_profile_step": start_profile_step,
        "end_profile_step": end_profile_step,
        "results_dir": str(results_dir),
        "exps_dir": str(exps_dir),
        "overwrite": True,
    }
    if cap is not None:
        section["max_train_micro_batch_size_per_gpu"] = cap
    zero = {**dict(base.get("zero_optimization") or {}), "stage": list(stages)}
    return {**base, "zero_optimization": zero, "autotuning": section}


def native_command(
    deepspeed_bin: str,
    script: pathlib.Path,
    ds_config_path: pathlib.Path,
    script_args: Sequence[str],
    master_port: int,
) -> list[str]:
    """``deepspeed --autotuning tune`` on one slot of this machine."""
    return [
        deepspeed_bin,
        "--autotuning",
        "tune",
        "--num_gpus",
        "1",
        "--master_port",
        str(master_port),
        str(script),
        "--deepspeed_config",
        str(ds_config_path),
        *script_args,
    ]


def first_error(stderr_text: str) -> str | None:
    """What follows the first ``Error``/``error``/``ERROR`` in the text, as DeepSpeed
    0.19.8 decides that an experiment failed; None when there is no such mark."""
    for line in stderr_text.splitlines():
        match = _ERROR_MARK.search(line)
        if match:
            return line[match.end() :].lstrip(": ").strip() or line.strip()
    return None


def read_experiment(folder: pathlib.Path) -> NativeExperiment | None:
    """The experiment in ``folder``; None when it is no experiment folder (or was never
    launched: DeepSpeed writes ``exp.json`` and ``stderr.log`` when it launches one)."""
    exp = read_json_or_none(folder / "exp.json")
    stderr = folder / "stderr.log"
    if not isinstance(exp, dict) or not stderr.exists():
        return None
    metrics = read_json_or_none(folder / "metrics.json")
    ds_config = read_json_or_none(folder / "ds_config.json")
    return NativeExperiment(
        exp_id=int(exp.get("exp_id", -1)),
        name=str(exp.get("name", folder.name)),
        ds_config=ds_config if isinstance(ds_config, dict) else dict(exp.get("ds_config") or {}),
        metrics=metrics if isinstance(metrics, dict) else None,
        error=first_error(stderr.read_text(errors="replace")),
    )


def read_experiments(results_dir: pathlib.Path) -> list[NativeExperiment]:
    """Every launched experiment under ``results_dir``, in launch order."""
    if not results_dir.is_dir():
        return []
    found = (read_experiment(p) for p in sorted(results_dir.iterdir()) if p.is_dir())
    return sorted((e for e in found if e is not None), key=lambda e: (e.exp_id, e.name))


def pick_winner(experiments: Sequence[NativeExperiment], metric: str) -> NativeExperiment | None:
    """The successful experiment with the largest ``metric`` (the first on a tie, as
    DeepSpeed keeps the first record with the best value); None if none succeeded."""
    best: NativeExperiment | None = None
    for exp in experiments:
        if exp.is_profile or exp.outcome != "ok" or exp.metrics is None:
            continue
        value = exp.metrics.get(metric)
        if not isinstance(value, (int, float)):
            continue
        if best is None or value > _metric(best, metric):
            best = exp
    return best


def _metric(exp: NativeExperiment, metric: str) -> float:
    assert exp.metrics is not None  # pick_winner only keeps experiments with metrics
    return float(exp.metrics[metric])


def without_autotuning(ds_config: Mapping[str, Any]) -> dict[str, Any]:
    """The ds_config to train with: the autotuning section removed."""
    return {k: v for k, v in ds_config.items() if k != "autotuning"}


@attrs.frozen
class NativeFindings:
    """What one autotuning run found: its experiments (profiling included), its pick's
    ds_config (DeepSpeed's ``ds_config_optimal.json`` when it wrote one, else the best
    experiment's), the pick's metric, and remarks for the report."""

    experiments: tuple[NativeExperiment, ...]
    ds_config: Mapping[str, Any] | None
    metric: float | None
    notes: tuple[str, ...]

    @property
    def trial_count(self) -> int:
        return len(self.experiments)

    @property
    def outcomes(self) -> dict[str, int]:
        return dict(Counter(e.outcome for e in self.experiments))

    @property
    def pick(self) -> Pick | None:
        return None if self.ds_config is None else Pick.from_ds_config(self.ds_config)


def read_findings(results_dir: pathlib.Path, metric: str = "throughput") -> NativeFindings:
    """Read a (finished or stopped) autotuning run's ``results_dir``."""
    experiments = tuple(read_experiments(results_dir))
    winner = pick_winner(experiments, metric)
    optimal = read_json_or_none(results_dir / OPTIMAL_CONFIG)
    notes: list[str] = []
    ds_config: dict[str, Any] | None = None
    if isinstance(optimal, dict):
        ds_config = without_autotuning(optimal)
        if winner is not None and without_autotuning(winner.ds_config) != ds_config:
            notes.append(f"{OPTIMAL_CONFIG} differs from the best experiment ({winner.name})")
    elif winner is not None:
        ds_config = without_autotuning(winner.ds_config)
        notes.append(f"no {OPTIMAL_CONFIG} (run stopped?): best experiment {winner.name} used")
    value = None if winner is None else _metric(winner, metric)
    return NativeFindings(experiments, ds_config, value, tuple(notes))
