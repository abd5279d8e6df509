"""The steps of one benchmark case: DeepSpeed's autotuner, our dsat, the re-measurement.

Each step records its result in its own folder (``run.json``, ``measurements.json``), so
``--reuse`` can keep finished steps of an interrupted run.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from benchmarks import native_e2e_native as native
from benchmarks import native_e2e_ours as ours
from benchmarks.native_e2e_measure import MeasureSettings, measure_alternately, measure_once
from benchmarks.native_e2e_proc import (
    ProcessResult,
    format_duration,
    free_port,
    remove_allreduce_buffers,
    run_logged,
)
from benchmarks.native_e2e_records import (
    NATIVE,
    OURS,
    Measurement,
    ModelCase,
    Pick,
    TunerRun,
    read_json_or_none,
)
from determined_dsat.jsonio import write_json_atomic

Say = Callable[[str], None]
RUN_RECORD = "run.json"
MEASUREMENTS_RECORD = "measurements.json"


@attrs.frozen
class CasePlan:
    """What every case shares: our method, the ZeRO stages and profile steps both tools
    use, the per-process memory cap (MiB, 0: none), a tuner's time limit (seconds), the
    re-measurement, the training script and the user's ds_config."""

    method: str
    stages: tuple[int, ...]
    start_profile_step: int
    end_profile_step: int
    memory_limit_mib: int
    tuner_timeout_s: float
    measure: MeasureSettings
    script: pathlib.Path
    base_ds_config: Mapping[str, Any]
    ours_same_profile_steps: bool = True
    """Whether our dsat measures DeepSpeed's profile steps (else ``--auto-profile-window``)."""


def _reused_or_fresh(folder: pathlib.Path, reuse: bool, say: Say) -> TunerRun | None:
    """The recorded run in ``folder`` when reusing one; else None, ``folder`` emptied."""
    record = read_json_or_none(folder / RUN_RECORD)
    if reuse and isinstance(record, dict):
        say(f"  reusing {folder / RUN_RECORD}")
        return TunerRun.from_json(record)
    _fresh(folder)
    return None


def _fresh(folder: pathlib.Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


def _progress(label: str, count: Callable[[], int], say: Say) -> Callable[[float], None]:
    def report(elapsed_s: float) -> None:
        say(f"  {label}: {count()} trials so far, {format_duration(elapsed_s)}")

    return report


def run_native(
    plan: CasePlan,
    folder: pathlib.Path,
    script_args: Sequence[str],
    cap: int | None,
    env: Mapping[str, str],
    say: Say,
    reuse: bool = False,
) -> TunerRun:
    """DeepSpeed's autotuner on the case (``cap`` None: its default cap)."""
    kept = _reused_or_fresh(folder, reuse, say)
    if kept is not None:
        return kept
    results_dir = folder / "autotuning_results"
    config = native.native_ds_config(
        plan.base_ds_config,
        stages=plan.stages,
        cap=cap,
        start_profile_step=plan.start_profile_step,
        end_profile_step=plan.end_profile_step,
        results_dir=results_dir,
        exps_dir=folder / "autotuning_exps",
    )
    config_path = folder / "ds_config.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    deepspeed_bin = str(pathlib.Path(sys.executable).with_name("deepspeed"))
    port = free_port()  # experiment i uses port + i
    command = native.native_command(deepspeed_bin, plan.script, config_path, script_args, port)
    say(f"  DeepSpeed autotuner: {' '.join(command)}")
    result = run_logged(
        command,
        cwd=folder,
        env=env,
        log_path=folder / "tuner.log",
        timeout_s=plan.tuner_timeout_s,
        memory_limit_mib=plan.memory_limit_mib,
        progress=_progress("DeepSpeed", lambda: len(native.read_experiments(results_dir)), say),
    )
    found = native.read_findings(results_dir)
    last_id = max((e.exp_id for e in found.experiments), default=0)
    remove_allreduce_buffers(range(port, port + last_id + 1))
    return _record(folder, NATIVE, command, result, found, say)


def run_ours(
    plan: CasePlan,
    folder: pathlib.Path,
    model: ModelCase,
    script_args: Sequence[str],
    cap: int | None,
    env: Mapping[str, str],
    say: Say,
    reuse: bool = False,
) -> TunerRun:
    """Our dsat on the case (``cap`` None: no ``--max-mbs``)."""
    kept = _reused_or_fresh(folder, reuse, say)
    if kept is not None:
        return kept
    config_path, model_dir = ours.prepare_experiment(
        folder, model, plan.script, script_args, plan.base_ds_config
    )
    run_dir = folder / "run"
    command = ours.dsat_command(
        sys.executable,
        plan.method,
        config_path,
        model_dir,
        run_dir,
        stages=plan.stages,
        start_profile_step=plan.start_profile_step if plan.ours_same_profile_steps else None,
        end_profile_step=plan.end_profile_step if plan.ours_same_profile_steps else None,
        cap=cap,
        memory_limit_mib=plan.memory_limit_mib,
    )
    say(f"  our dsat: {' '.join(command)}")
    result = run_logged(
        command,
        cwd=folder,
        env=env,
        log_path=folder / "tuner.log",
        timeout_s=plan.tuner_timeout_s,
        progress=_progress("dsat", lambda: len(ours.read_trials(run_dir / "trials.jsonl")), say),
    )
    found = ours.read_findings(run_dir)
    return _record(folder, OURS, command, result, found, say)


class Findings(Protocol):
    """What either tool's run left, as the benchmark reads it."""

    @property
    def trial_count(self) -> int: ...
    @property
    def outcomes(self) -> dict[str, int]: ...
    @property
    def pick(self) -> Pick | None: ...
    @property
    def metric(self) -> float | None: ...
    @property
    def ds_config(self) -> Mapping[str, Any] | None: ...
    @property
    def notes(self) -> tuple[str, ...]: ...


def _record(
    folder: pathlib.Path,
    tool: str,
    command: Sequence[str],
    result: ProcessResult,
    found: Findings,
    say: Say,
) -> TunerRun:
    """The tuner run's record, written to ``folder/run.json`` and announced."""
    run = TunerRun(
        tool=tool,
        command=tuple(command),
        wall_s=result.wall_s,
        exit_code=result.exit_code,
        timed_out=result.timed_out,
        trials=found.trial_count,
        outcomes=found.outcomes,
        pick=found.pick,
        metric=found.metric,
        ds_config=found.ds_config,
        notes=found.notes,
    )
    write_json_atomic(folder / RUN_RECORD, run.to_json())
    say(f"  {tool}: {_summary(run)}")
    return run


def _summary(run: TunerRun) -> str:
    pick = "no pick" if run.pick is None else run.pick.describe()
    metric = "—" if run.metric is None else f"{run.metric:,.1f} samples/s"
    return f"{format_duration(run.wall_s)}, {run.trials} trials {run.outcomes}; {pick}; {metric}"


def _pick_path(folder: pathlib.Path, tool: str) -> pathlib.Path:
    """Where a tool's pick is written for its re-measurements."""
    return folder / f"{tool}_ds_config.json"


def _measured_these_picks(folder: pathlib.Path, runs: Mapping[str, TunerRun]) -> bool:
    """Whether the measurements in ``folder`` are of these runs' picks (a re-run tuner may
    pick another config; its old measurements must not be reported as the new pick's)."""
    for tool, run in runs.items():
        recorded = read_json_or_none(_pick_path(folder, tool))
        if run.ds_config is not None and recorded != run.ds_config:
            return False
    return True


def measure_case(
    plan: CasePlan,
    folder: pathlib.Path,
    runs: Mapping[str, TunerRun],
    script_args: Sequence[str],
    repeats: int,
    env: Mapping[str, str],
    say: Say,
    reuse: bool = False,
) -> tuple[Measurement, ...]:
    """Re-measure every pick ``repeats`` times, alternating between the tools."""
    record = read_json_or_none(folder / MEASUREMENTS_RECORD)
    if reuse and isinstance(record, list):
        if _measured_these_picks(folder, runs):
            say(f"  reusing {folder / MEASUREMENTS_RECORD}")
            return tuple(Measurement.from_json(m) for m in record)
        say(f"  the picks differ from those measured in {folder}: measuring again")
    _fresh(folder)
    configs: dict[str, pathlib.Path] = {}
    for tool, run in runs.items():
        if run.ds_config is None:
            say(f"  {tool} picked nothing: not measured")
            continue
        configs[tool] = _pick_path(folder, tool)
        configs[tool].write_text(json.dumps(run.ds_config, indent=2) + "\n")

    def run_one(tool: str, order: int, ds_config_path: pathlib.Path) -> Measurement:
        return measure_once(
            tool,
            order,
            script=plan.script,
            ds_config_path=ds_config_path,
            script_args=script_args,
            settings=plan.measure,
            env=env,
            folder=folder,
        )

    def report(m: Measurement) -> None:
        value = m.error if m.samples_per_s is None else f"{m.samples_per_s:,.1f} samples/s"
        say(f"  measurement {m.order + 1}: {m.tool}: {value} ({format_duration(m.wall_s)})")

    done = measure_alternately(configs, repeats, run_one, report)
    write_json_atomic(folder / MEASUREMENTS_RECORD, [m.to_json() for m in done])
    return done
