"""Local runner overhead: what ``--backend local`` costs per trial, against two references.

One search trial of the Core API example (``examples/core_api``, the tiny GPT on CPU:
ZeRO-1, micro-batch 8, DeepSpeed profiling steps 3-5, world size 1, ``DS_ACCELERATOR=cpu``)
is run three ways, each timed from launch to completion:

``runner``
    ``LocalExecutor.launch`` then ``next_completion``, as the search does: trial
    directory (model files linked in, trial sheet), ports, spawn through
    ``determined_dsat.integration.bootstrap``, waiting on the process, classifying
    the outcome from what it left.
``launcher``
    DeepSpeed's own launcher, ``deepspeed --num_nodes 1 --num_gpus 1 --no_local_rank
    --module determined_dsat.integration.bootstrap SHEET -- python3 train.py``. The
    script cannot run under the launcher alone (``det.get_cluster_info()`` is ``None``
    off a cluster, and ``train.py`` exits), so it goes through the same bootstrap: the
    only difference from ``floor`` is the launcher.
``floor``
    One plain ``python -m determined_dsat.integration.bootstrap SHEET -- python3
    train.py`` process with the distributed environment set by hand, as the runner
    sets it (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``, ...).

Every way gets the same hyperparameters (``ConfigSpace.hparams`` of the trial, as the
search builds them), ``OMP_NUM_THREADS=1`` and the same CPU core, and must leave
DeepSpeed's ``autotuning_metric.json``. The ways are interleaved, their order rotating
each round, after one untimed warm-up round. Reported: medians, and the ratios
runner/floor (target <= 1.1) and launcher/floor. Usage::

    python -m benchmarks.local_overhead [--repeats 5] [--core 0] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from determined_dsat.integration.local_context import METRICS_NAME, SHEET_NAME, TrialSheet
from determined_dsat.runners.devices import Slots
from determined_dsat.runners.entrypoint import parse_entrypoint
from determined_dsat.runners.local import (
    LocalExecutor,
    LocalTrialOptions,
    free_ports,
    remove_shared_memory,
)
from determined_dsat.space.batch import MicroBatchGrid, configured_gas
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.ds_config import METRIC_PATH, trial_length
from determined_dsat.space.experiment import Experiment, load_experiment
from determined_dsat.trials.records import Outcome, TrialKind, TrialSpec
from determined_dsat.trials.specs import hparams_of

REPO = pathlib.Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / "examples" / "core_api"
CONFIG = MODEL_DIR / "deepspeed-cpu.yaml"
DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results"
WAYS = ("runner", "launcher", "floor")
TIMEOUT_S = 600.0


@attrs.frozen
class Trial:
    """The one trial every way runs."""

    experiment: Experiment
    hparams: Mapping[str, Any]
    length: int
    core: int


@attrs.frozen
class Measurement:
    way: str
    round: int
    seconds: float
    runner_duration_s: float | None  # the runner's own duration_s (from spawn), runner only
    throughput: float


# ----- the trial ------------------------------------------------------------------------


def make_trial(opts: argparse.Namespace) -> Trial:
    experiment = load_experiment(CONFIG, MODEL_DIR)
    grid = MicroBatchGrid(
        slots=1,
        default_gas=configured_gas(experiment.ds_config),
        train_batch_size=None,
        divisible_by=1,
    )
    space = ConfigSpace(
        base_ds_config=experiment.ds_config,
        base_hparams=experiment.hparams,
        stages=(opts.stage,),
        grid=grid,
        start_profile_step=opts.start_profile_step,
        end_profile_step=opts.end_profile_step,
    )
    spec = TrialSpec(
        request_id="overhead",
        kind=TrialKind.SEARCH,
        mbs=opts.mbs,
        gas=1,
        zero={"stage": opts.stage},
    )
    return Trial(
        experiment=experiment,
        hparams=hparams_of(space, spec),
        length=trial_length(opts.end_profile_step),
        core=opts.core,
    )


def prepare_dir(trial: Trial, trial_dir: pathlib.Path) -> pathlib.Path:
    """A trial directory as the runner makes it: model files linked in, the trial sheet."""
    trial_dir.mkdir(parents=True)
    for source in sorted(trial.experiment.model_dir.iterdir()):
        (trial_dir / source.name).symlink_to(source.resolve())
    sheet = trial_dir / SHEET_NAME
    TrialSheet(
        hparams=dict(trial.hparams),
        experiment_config=dict(trial.experiment.raw),
        length=trial.length,
        checkpoint_dir=str(trial_dir / "checkpoints"),
        metrics_path=str(trial_dir / METRICS_NAME),
    ).write(sheet)
    return sheet


def _throughput(trial_dir: pathlib.Path, way: str) -> float:
    path = trial_dir / METRIC_PATH
    if not path.exists():
        raise RuntimeError(f"{way}: the trial left no {METRIC_PATH}; see {trial_dir}")
    return float(json.loads(path.read_text())["throughput"])


# ----- the three ways ---------------------------------------------------------------------


def run_runner(trial: Trial, work: pathlib.Path, name: str) -> tuple[float, float, float]:
    """(seconds, the runner's duration_s, throughput) of one trial run by LocalExecutor."""
    entrypoint = trial.experiment.raw["entrypoint"]
    options = LocalTrialOptions(
        experiment_config=trial.experiment.raw,
        model_dir=trial.experiment.model_dir,
        command=parse_entrypoint(entrypoint, "entrypoint"),
        slots_per_trial=1,
        trial_timeout_s=TIMEOUT_S,
    )
    run_dir = work / name

    def trial_dir_of(request_id: str) -> pathlib.Path:
        path = run_dir / "trials" / request_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    executor = LocalExecutor(options, Slots(ids=(trial.core,), gpu=False), trial_dir_of)
    started = time.perf_counter()
    try:
        executor.launch("trial", trial.hparams, trial.length)
        completion = executor.next_completion()
    finally:
        executor.cancel_all()
    seconds = time.perf_counter() - started
    result = completion.result
    if result.outcome is not Outcome.OK:
        raise RuntimeError(f"runner: trial ended {result.outcome.value}: {result.detail}")
    assert result.duration_s is not None
    return seconds, result.duration_s, _throughput(run_dir / "trials" / "trial", "runner")


def _pin(core: int) -> None:
    os.sched_setaffinity(0, {core})


def _run_process(
    command: Sequence[str], env: Mapping[str, str], trial_dir: pathlib.Path, core: int, way: str
) -> float:
    log = trial_dir / "rank0.log"
    with log.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(command),
            cwd=trial_dir,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=lambda: _pin(core),
        )
        try:
            code = proc.wait(timeout=TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{way}: exit code {code}; see {log}")
    return seconds


def _base_env() -> dict[str, str]:
    return dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _bootstrap_args(sheet: pathlib.Path, trial: Trial) -> list[str]:
    argv = parse_entrypoint(trial.experiment.raw["entrypoint"], "entrypoint").argv
    return ["determined_dsat.integration.bootstrap", str(sheet), "--", "python3", *argv]


def run_floor(trial: Trial, work: pathlib.Path, name: str) -> tuple[float, float]:
    """(seconds, throughput): the bootstrap process alone, distributed env set by hand."""
    trial_dir = work / name
    sheet = prepare_dir(trial, trial_dir)
    master, comm1, comm2 = free_ports(3)
    env = _base_env()
    env.update(
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        LOCAL_WORLD_SIZE="1",
        LOCAL_SIZE="1",
        CROSS_RANK="0",
        CROSS_SIZE="1",
        GROUP_RANK="0",
        GROUP_WORLD_SIZE="1",
        DET_CHIEF_IP="127.0.0.1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(master),
        INTER_TRAIN_PROCESS_COMM_PORT_1=str(comm1),
        INTER_TRAIN_PROCESS_COMM_PORT_2=str(comm2),
    )
    command = [sys.executable, "-m", *_bootstrap_args(sheet, trial)]
    try:
        seconds = _run_process(command, env, trial_dir, trial.core, "floor")
    finally:
        remove_shared_memory(master)
    return seconds, _throughput(trial_dir, "floor")


def deepspeed_launcher() -> pathlib.Path:
    beside = pathlib.Path(sys.executable).parent / "deepspeed"
    found = beside if beside.exists() else shutil.which("deepspeed")
    if found is None:
        raise RuntimeError("the deepspeed launcher script is not installed")
    return pathlib.Path(found)


def launcher_command(sheet: pathlib.Path, trial: Trial, port: int) -> list[str]:
    return [
        sys.executable,
        str(deepspeed_launcher()),
        "--num_nodes",
        "1",
        "--num_gpus",
        "1",
        "--master_port",
        str(port),
        "--no_local_rank",
        "--module",
        *_bootstrap_args(sheet, trial),
    ]


def run_launcher(trial: Trial, work: pathlib.Path, name: str) -> tuple[float, float]:
    """(seconds, throughput): the same process under DeepSpeed's launcher."""
    trial_dir = work / name
    sheet = prepare_dir(trial, trial_dir)
    (port,) = free_ports(1)
    command = launcher_command(sheet, trial, port)
    try:
        seconds = _run_process(command, _base_env(), trial_dir, trial.core, "launcher")
    finally:
        remove_shared_memory(port)
    return seconds, _throughput(trial_dir, "launcher")


# DeepSpeed 0.19.8's CPU allreduce leaves a 66 MiB segment per rank in /dev/shm (named
# after MASTER_ADDR/MASTER_PORT, never unlinked); every run here has its own port. The
# runner removes its trials' (inside the time measured); the other ways' are removed here,
# after their timing.
SHM_DIR = pathlib.Path("/dev/shm")
SHM_PATTERN = "deepspeed_allreduce_buffer_*_127.0.0.1_*"


def shm_buffers() -> set[str]:
    return {p.name for p in SHM_DIR.glob(SHM_PATTERN)} if SHM_DIR.is_dir() else set()


def remove_leaked_shm(before: set[str]) -> int:
    """Remove the buffers created since ``before`` that no live process maps (the
    runner removes its own; this is for a runner that does not)."""
    new = shm_buffers() - before
    if not new:
        return 0
    mapped: set[str] = set()
    for maps in pathlib.Path("/proc").glob("[0-9]*/maps"):
        with contextlib.suppress(OSError):
            for line in maps.read_text().splitlines():
                if "/dev/shm/deepspeed_allreduce_buffer_" in line:
                    mapped.add(line.split("/dev/shm/", 1)[1].split()[0])
    removed = 0
    for name in new - mapped:
        with contextlib.suppress(OSError):
            (SHM_DIR / name).unlink()
            removed += 1
    return removed


def measure(way: str, trial: Trial, work: pathlib.Path, round_: int) -> Measurement:
    before = shm_buffers()
    try:
        return _measure(way, trial, work, round_)
    finally:
        if way == "runner":
            remove_leaked_shm(before)


def _measure(way: str, trial: Trial, work: pathlib.Path, round_: int) -> Measurement:
    name = f"{way}-{round_}"
    if way == "runner":
        seconds, duration, throughput = run_runner(trial, work, name)
        return Measurement(way, round_, seconds, duration, throughput)
    run = run_launcher if way == "launcher" else run_floor
    seconds, throughput = run(trial, work, name)
    return Measurement(way, round_, seconds, None, throughput)


# ----- report -----------------------------------------------------------------------------


def _median(items: Sequence[Measurement], way: str) -> float:
    return statistics.median(m.seconds for m in items if m.way == way)


def summary(items: Sequence[Measurement]) -> dict[str, Any]:
    medians = {way: _median(items, way) for way in WAYS}
    runner_own = [m.runner_duration_s for m in items if m.runner_duration_s is not None]
    return {
        "median_s": medians,
        "min_s": {way: min(m.seconds for m in items if m.way == way) for way in WAYS},
        "max_s": {way: max(m.seconds for m in items if m.way == way) for way in WAYS},
        "runner_duration_s_median": statistics.median(runner_own),
        "ratio_runner_to_floor": medians["runner"] / medians["floor"],
        "ratio_launcher_to_floor": medians["launcher"] / medians["floor"],
        "overhead_runner_s": medians["runner"] - medians["floor"],
        "overhead_launcher_s": medians["launcher"] - medians["floor"],
        "throughput_median": {
            way: statistics.median(m.throughput for m in items if m.way == way) for way in WAYS
        },
    }


def _digest() -> str:
    root = REPO / "determined_dsat"
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def environment() -> dict[str, Any]:
    import deepspeed
    import torch

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores",
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "deepspeed": str(deepspeed.__version__),
        "determined_dsat_sources": _digest(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def command_line(opts: argparse.Namespace) -> str:
    return (
        f"python -m benchmarks.local_overhead --repeats {opts.repeats} --mbs {opts.mbs} "
        f"--stage {opts.stage} --start-profile-step {opts.start_profile_step} "
        f"--end-profile-step {opts.end_profile_step} --core {opts.core}"
    )


def render(opts: argparse.Namespace, items: Sequence[Measurement], env: Mapping[str, Any]) -> str:
    s = summary(items)
    med, lo, hi = s["median_s"], s["min_s"], s["max_s"]
    labels = {
        "runner": "runner (`LocalExecutor`, launch to completion)",
        "launcher": "DeepSpeed launcher (`deepspeed --num_nodes 1 --num_gpus 1`)",
        "floor": "floor (plain bootstrap process, env by hand)",
    }
    lines = [
        "# Local runner overhead",
        "",
        f"`{command_line(opts)}`",
        "",
        f"One trial of `examples/core_api` (ZeRO-{opts.stage}, micro-batch {opts.mbs}, "
        f"profile steps {opts.start_profile_step}-{opts.end_profile_step}, world size 1, "
        f"CPU core {opts.core}, `OMP_NUM_THREADS=1`), {opts.repeats} timed runs per way, "
        "interleaved, after one untimed warm-up round.",
        "",
        f"{env['date']}; {env['machine']}; Python {env['python']}, torch {env['torch']}, "
        f"deepspeed {env['deepspeed']}; determined_dsat sources {env['determined_dsat_sources']}; "
        f"load average at the end {env['load_average']}.",
        "",
        "| way | median s | min s | max s | / floor | throughput (samples/s, median) |",
        "|---|---|---|---|---|---|",
    ]
    for way in WAYS:
        lines.append(
            f"| {labels[way]} | {med[way]:.2f} | {lo[way]:.2f} | {hi[way]:.2f} | "
            f"{med[way] / med['floor']:.3f} | {s['throughput_median'][way]:.0f} |"
        )
    lines += [
        "",
        f"- runner / floor = **{s['ratio_runner_to_floor']:.3f}** (target <= 1.1); "
        f"{s['overhead_runner_s']:+.2f} s per trial.",
        f"- launcher / floor = **{s['ratio_launcher_to_floor']:.3f}**; "
        f"{s['overhead_launcher_s']:+.2f} s per trial.",
        f"- The runner's own `duration_s` (what `trials.jsonl` records, from spawn to "
        f"exit seen): median {s['runner_duration_s_median']:.2f} s.",
        "",
        "Runs (seconds, in order):",
        "",
        "| round | " + " | ".join(WAYS) + " |",
        "|---|" + "---|" * len(WAYS),
    ]
    for round_ in sorted({m.round for m in items}):
        cells = {m.way: f"{m.seconds:.2f}" for m in items if m.round == round_}
        lines.append(f"| {round_} | " + " | ".join(cells.get(w, "") for w in WAYS) + " |")
    return "\n".join(lines) + "\n"


def to_json(
    opts: argparse.Namespace, items: Sequence[Measurement], env: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "command": command_line(opts),
        "environment": dict(env),
        "trial": {
            "example": "examples/core_api",
            "zero_stage": opts.stage,
            "micro_batch": opts.mbs,
            "start_profile_step": opts.start_profile_step,
            "end_profile_step": opts.end_profile_step,
            "world_size": 1,
            "core": opts.core,
        },
        "summary": summary(items),
        "runs": [attrs.asdict(m) for m in items],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per way")
    p.add_argument("--mbs", type=int, default=8, help="train_micro_batch_size_per_gpu")
    p.add_argument("--stage", type=int, default=1, help="ZeRO stage")
    p.add_argument("--start-profile-step", type=int, default=3)
    p.add_argument("--end-profile-step", type=int, default=5)
    p.add_argument("--core", type=int, default=0, help="CPU core every way runs on")
    p.add_argument("--keep", action="store_true", help="keep the trial directories")
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="results directory")
    opts = p.parse_args(argv)
    if opts.repeats < 1:
        p.error("--repeats must be at least 1")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    trial = make_trial(opts)
    work = pathlib.Path(tempfile.mkdtemp(prefix="dsat-overhead-"))
    items: list[Measurement] = []
    try:
        for round_ in range(opts.repeats + 1):  # round 0: warm-up, not counted
            order = WAYS[round_ % len(WAYS) :] + WAYS[: round_ % len(WAYS)]
            for way in order:
                m = measure(way, trial, work, round_)
                print(f"round {round_} {way}: {m.seconds:.2f} s", file=sys.stderr, flush=True)
                if round_ > 0:
                    items.append(m)
    finally:
        if opts.keep:
            print(f"trial directories kept in {work}", file=sys.stderr)
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(work)
    env = environment()
    report = render(opts, items, env)
    print(report)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "local_overhead.md").write_text(report)
    (opts.out / "local_overhead.json").write_text(json.dumps(to_json(opts, items, env), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
