"""End to end against DeepSpeed's own autotuner: wall time to a trusted config, on this machine.

Per model and micro-batch-cap configuration (``same-cap``: both tools get the same cap;
``defaults``: each its own, DeepSpeed's being 1024) it runs, one tool at a time on one
slot, DeepSpeed 0.19.8's ``deepspeed --autotuning tune`` (fast mode) and then our
``python3 -m determined_dsat METHOD ... --backend local --max-concurrent-trials 1``, on
the same training script (``e2e_models/train.py``), model, data and user ds_config;
records each one's wall time, trials, pick and its own metric for the pick; and then
re-measures both picks alternately with one timed run of the same script
(``native_e2e_measure.py``). Output: ``OUT/native_e2e.md`` and ``OUT/native_e2e.json``.

    python -m benchmarks.native_e2e                  # the full run (hours on 2 cores)
    python -m benchmarks.native_e2e --quick          # tiny models, to see it work

Both tools share: ``DS_ACCELERATOR=cpu``, ``OMP_NUM_THREADS=1``, the ZeRO stages, the
profile steps, a per-process address-space cap (``--memory-limit-mib``; ours through
``--trial-memory-limit``, DeepSpeed's through the limit its process tree inherits) and a
private torch extensions cache that is warmed before anything is timed.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import shlex
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import attrs

from benchmarks.e2e_models.models import format_dims
from benchmarks.native_e2e_measure import MeasureSettings
from benchmarks.native_e2e_proc import REPO, child_env, format_duration, run_logged
from benchmarks.native_e2e_records import (
    CONFIGS,
    NATIVE,
    NATIVE_DEFAULT_CAP,
    OURS,
    SAME_CAP,
    CaseResult,
    ModelCase,
)
from benchmarks.native_e2e_report import (
    ReportContext,
    machine_info,
    markdown,
    report_json,
    versions,
)
from benchmarks.native_e2e_steps import CasePlan, measure_case, run_native, run_ours
from determined_dsat.jsonio import write_json_atomic, write_text_atomic

SCRIPT = REPO / "benchmarks" / "e2e_models" / "train.py"
MODELS_FULL = {
    "gpt": ModelCase(
        "gpt",
        "gpt",
        {"n_layer": 4, "n_head": 4, "d_model": 256, "seq_len": 128, "vocab_size": 16384},
        "the Core API example's GPT: 4 layers, d_model 256, seq 128, vocab 16384 "
        "(7.4 M parameters), fp32, AdamW, random tokens",
    ),
    "mlp": ModelCase(
        "mlp",
        "mlp",
        {"in_dim": 1024, "width": 2048, "depth": 4, "classes": 16},
        "a wide MLP: 1024 -> 4 x 2048 (GELU) -> 16 classes (14.7 M parameters), fp32, "
        "AdamW, random features",
    ),
}
MODELS_QUICK = {
    "gpt": ModelCase(
        "gpt",
        "gpt",
        {"n_layer": 2, "n_head": 4, "d_model": 64, "seq_len": 64, "vocab_size": 512},
        "tiny GPT (2 layers, d_model 64, seq 64; 0.14 M parameters), fp32",
    ),
    "mlp": ModelCase(
        "mlp",
        "mlp",
        {"in_dim": 64, "width": 256, "depth": 2, "classes": 10},
        "tiny MLP (64 -> 2 x 256 -> 10; 0.08 M parameters), fp32",
    ),
}
USER_MBS = 4
"""The user's ds_config micro-batch (DeepSpeed's first probe, our baseline trial)."""
BASE_DS_CONFIG = {
    "train_micro_batch_size_per_gpu": USER_MBS,
    "gradient_accumulation_steps": 1,
    "optimizer": {
        "type": "AdamW",
        "params": {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1},
    },
    "gradient_clipping": 1.0,
    "zero_optimization": {"stage": 0},
    "steps_per_print": 1_000_000,
    "wall_clock_breakdown": False,
}
WARMUP_OPS = ("FusedAdamBuilder", "CPUAdamBuilder", "ShareMemCommBuilder")
"""The ops our dsat's own warm-up loads for an AdamW ds_config on CPU (DeepSpeed's
experiments load FusedAdam and the shared-memory comm op); compiled here once, so that
neither tool's wall time includes compiling."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.native_e2e", description=__doc__.splitlines()[0]
    )
    add = parser.add_argument
    add("--method", default="model", help="our search method (default: model)")
    add("--models", nargs="+", choices=sorted(MODELS_FULL), default=sorted(MODELS_FULL))
    add("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    add("--cap", type=int, help="micro-batch cap of the same-cap configuration (32; quick 8)")
    add("--stages", nargs="+", type=int, default=[0, 1, 2, 3], help="ZeRO stages, both tools")
    add("--start-profile-step", type=int, default=3, help="DeepSpeed's (its default: 3)")
    add("--end-profile-step", type=int, default=5, help="DeepSpeed's (its default: 5)")
    add(
        "--ours-profile-steps",
        choices=("same", "auto"),
        default="same",
        help="same: our dsat measures DeepSpeed's --start/--end-profile-step (our default "
        "steps too); auto: it chooses each trial's window (--auto-profile-window)",
    )
    add("--repeats", type=int, help="re-measurements per pick, alternating (3)")
    add("--warmup-steps", type=int, help="untimed steps per re-measurement (3; quick 1)")
    add("--timed-steps", type=int, help="timed steps per re-measurement (10; quick 3)")
    add("--memory-limit-mib", type=int, default=8192, help="per process, both tools (0: none)")
    add("--tuner-timeout", type=float, default=4 * 3600.0, help="seconds per tuner run")
    add("--measure-timeout", type=float, default=1800.0, help="seconds per re-measurement")
    add("--quick", action="store_true", help="tiny models and short measurements")
    add("--reuse", action="store_true", help="keep finished phases found in the work dir")
    add("--out", type=pathlib.Path, help="report folder (benchmarks/results/native_e2e[/quick])")
    add("--work-dir", type=pathlib.Path, help="tool runs (dsat-runs/native-e2e[/quick])")
    add(
        "--extensions-dir",
        type=pathlib.Path,
        help="private torch extensions cache (dsat-runs/native-e2e/torch_extensions)",
    )
    return parser.parse_args(argv)


@attrs.frozen
class Plan:
    """The whole benchmark run, every default filled in."""

    method: str
    models: tuple[ModelCase, ...]
    configs: tuple[str, ...]
    cap: int
    case: CasePlan
    repeats: int
    out_dir: pathlib.Path
    work_dir: pathlib.Path
    extensions_dir: pathlib.Path
    reuse: bool
    quick: bool


def plan_from_args(args: argparse.Namespace) -> Plan:
    """Fill in the defaults, which differ between the full run and ``--quick``."""
    quick = bool(args.quick)
    models = MODELS_QUICK if quick else MODELS_FULL
    suffix = pathlib.Path("quick") if quick else pathlib.Path()
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit("native_e2e: --repeats must be at least 1")
    measure = MeasureSettings(
        warmup_steps=args.warmup_steps if args.warmup_steps is not None else (1 if quick else 3),
        timed_steps=args.timed_steps if args.timed_steps is not None else (3 if quick else 10),
        memory_limit_mib=args.memory_limit_mib,
        timeout_s=args.measure_timeout,
    )
    case = CasePlan(
        method=args.method,
        stages=tuple(args.stages),
        start_profile_step=args.start_profile_step,
        end_profile_step=args.end_profile_step,
        ours_same_profile_steps=args.ours_profile_steps == "same",
        memory_limit_mib=args.memory_limit_mib,
        tuner_timeout_s=args.tuner_timeout,
        measure=measure,
        script=SCRIPT,
        base_ds_config=BASE_DS_CONFIG,
    )
    return Plan(
        method=args.method,
        models=tuple(models[name] for name in args.models),
        configs=tuple(args.configs),
        cap=args.cap if args.cap is not None else (8 if quick else 32),
        case=case,
        repeats=args.repeats if args.repeats is not None else 3,
        out_dir=args.out or REPO / "benchmarks" / "results" / "native_e2e" / suffix,
        work_dir=args.work_dir or REPO / "dsat-runs" / "native-e2e" / suffix,
        extensions_dir=args.extensions_dir
        or REPO / "dsat-runs" / "native-e2e" / "torch_extensions",
        reuse=bool(args.reuse),
        quick=quick,
    )


def say(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


class Phases:
    """Wall time of every phase, in the order they ran (seconds)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        say(f"{name} ...")
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = time.monotonic() - started
            say(f"{name}: {format_duration(self.seconds[name])}")


def warm_up_ops(plan: Plan, env: dict[str, str]) -> None:
    """Compile (first time) and load DeepSpeed's ops into the private extensions cache."""
    code = "; ".join(
        ["from deepspeed.ops.op_builder import " + ", ".join(WARMUP_OPS)]
        + [f"{name}().load()" for name in WARMUP_OPS]
    )
    result = run_logged(
        [sys.executable, "-c", code],
        cwd=plan.work_dir,
        env=env,
        log_path=plan.work_dir / "warmup.log",
        timeout_s=3600.0,
    )
    if result.exit_code != 0:
        say(f"warning: op warm-up failed (see {plan.work_dir / 'warmup.log'})")


def ours_cap_for(config: str, cap: int, dsat_has_cap: bool) -> int | None:
    """Our micro-batch cap in ``config``: the shared cap when dsat takes one, else none."""
    return cap if config == SAME_CAP and dsat_has_cap else None


def run_case(
    plan: Plan, model: ModelCase, config: str, env: dict[str, str], dsat_has_cap: bool
) -> CaseResult:
    """Both tuners on one model and configuration, then the alternating re-measurement."""
    folder = plan.work_dir / f"{model.name}-{config}"
    folder.mkdir(parents=True, exist_ok=True)
    native_setting = plan.cap if config == SAME_CAP else None  # None: DeepSpeed's default
    native_cap = NATIVE_DEFAULT_CAP if native_setting is None else native_setting
    ours_cap = ours_cap_for(config, plan.cap, dsat_has_cap)
    notes = []
    if config == SAME_CAP and ours_cap is None:
        notes.append("the installed dsat has no --max-mbs: ours ran without a micro-batch cap")
    script_args = ["--model", model.kind, "--dims", format_dims(model.dims)]
    say(f"== {model.name} / {config}: {model.description}")
    runs = {
        NATIVE: run_native(
            plan.case, folder / NATIVE, script_args, native_setting, env, say, plan.reuse
        ),
        OURS: run_ours(
            plan.case, folder / OURS, model, script_args, ours_cap, env, say, plan.reuse
        ),
    }
    measurements = measure_case(
        plan.case, folder / "measure", runs, script_args, plan.repeats, env, say, plan.reuse
    )
    return CaseResult(model, config, native_cap, ours_cap, runs, measurements, tuple(notes))


def write_report(plan: Plan, cases: Sequence[CaseResult], context: ReportContext) -> None:
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(plan.out_dir / "native_e2e.md", markdown(cases, context))
    write_json_atomic(plan.out_dir / "native_e2e.json", report_json(cases, context))
    say(f"report: {plan.out_dir / 'native_e2e.md'}")


def _stop_on_signals() -> None:
    """SIGTERM, and SIGINT even where a background shell ignores it, end the run through
    ``SystemExit``/``KeyboardInterrupt``, so the running tool's process group is stopped."""

    def terminate(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: Sequence[str] | None = None) -> int:
    _stop_on_signals()
    args = parse_args(argv)
    plan = plan_from_args(args)
    command = shlex.join([sys.executable, "-m", "benchmarks.native_e2e", *(argv or sys.argv[1:])])
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    env = child_env(plan.extensions_dir)
    phases = Phases()
    notes: list[str] = []
    with phases.phase("environment"):
        from benchmarks.native_e2e_ours import MAX_MBS_FLAG, dsat_knows

        dsat_has_cap = dsat_knows(sys.executable, plan.method, MAX_MBS_FLAG, env)
        if not dsat_has_cap and SAME_CAP in plan.configs:
            message = f"the installed dsat does not know {MAX_MBS_FLAG}: ours runs uncapped"
            say(f"warning: {message}")
            notes.append(message)
        found_versions = versions()
    with phases.phase("DeepSpeed op warm-up (not counted for either tool)"):
        warm_up_ops(plan, env)
    cases = []
    for model in plan.models:
        for config in plan.configs:
            with phases.phase(f"{model.name} / {config}"):
                cases.append(run_case(plan, model, config, env, dsat_has_cap))
    settings = {
        "method": plan.method,
        "zero stages": " ".join(map(str, plan.case.stages)),
        "profile steps": f"{plan.case.start_profile_step}-{plan.case.end_profile_step}"
        + (
            "" if plan.case.ours_same_profile_steps else " (DeepSpeed; ours: --auto-profile-window)"
        ),
        "same cap": plan.cap,
        "user ds_config mbs": USER_MBS,
        "memory limit per process (MiB)": plan.case.memory_limit_mib or "none",
        "re-measurement": f"{plan.repeats} x {plan.case.measure.timed_steps} timed steps "
        f"after {plan.case.measure.warmup_steps} warm-up steps, alternating",
        "models": "; ".join(f"{m.name}: {m.description}" for m in plan.models),
    }
    context = ReportContext(
        command, started, machine_info(), found_versions, settings, phases.seconds, notes
    )
    write_report(plan, cases, context)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
