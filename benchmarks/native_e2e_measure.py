"""Re-measuring both tuners' picks with one measurement, alternately.

The measurement is a plain timed run of the benchmark's training script with the pick's
ds_config (no autotuning section): ``warmup_steps`` optimizer steps, then
``timed_steps`` more, each timed on the host (``train.py --timed-steps``); its result is
``train_batch_size x timed_steps / their total seconds`` in samples/s. The runs alternate
A, B, A, B, ... so that a slow spell of the shared machine hits both picks alike.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from benchmarks.native_e2e_proc import free_port, remove_allreduce_buffers, run_logged
from benchmarks.native_e2e_records import Measurement, read_json_or_none


def alternating_schedule(tools: Sequence[str], repeats: int) -> list[str]:
    """``tools`` in turn, ``repeats`` rounds: ``["a", "b"], 3`` -> a, b, a, b, a, b."""
    if repeats < 0:
        raise ValueError("repeats must not be negative")
    return [tool for _ in range(repeats) for tool in tools]


@attrs.frozen
class MeasureSettings:
    """The measurement both picks get: steps, the per-process memory cap (MiB, 0: none)
    and the time limit of one run (seconds)."""

    warmup_steps: int
    timed_steps: int
    memory_limit_mib: int
    timeout_s: float


def timed_command(
    script: pathlib.Path,
    ds_config_path: pathlib.Path,
    script_args: Sequence[str],
    settings: MeasureSettings,
    timing_out: pathlib.Path,
) -> list[str]:
    """One timed run of ``script`` with a pick's ds_config, as a single rank."""
    return [
        sys.executable,
        str(script),
        "--deepspeed_config",
        str(ds_config_path),
        *script_args,
        "--warmup-steps",
        str(settings.warmup_steps),
        "--timed-steps",
        str(settings.timed_steps),
        "--timing-out",
        str(timing_out),
    ]


def single_rank_env(base: Mapping[str, str], port: int) -> dict[str, str]:
    """``base`` plus the environment ``deepspeed.init_distributed`` reads for one rank."""
    return {
        **base,
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def measurement_from(
    tool: str, order: int, wall_s: float, result: Any, failure: str | None
) -> Measurement:
    """A measurement from the script's timing JSON (``result``), or a failed one."""
    if failure is None and isinstance(result, dict) and result.get("samples_per_second"):
        return Measurement(
            tool=tool,
            order=order,
            samples_per_s=float(result["samples_per_second"]),
            wall_s=wall_s,
            step_seconds=tuple(float(s) for s in result.get("step_seconds") or ()),
        )
    return Measurement(tool, order, None, wall_s, (), failure or "no timing written")


def measure_once(
    tool: str,
    order: int,
    *,
    script: pathlib.Path,
    ds_config_path: pathlib.Path,
    script_args: Sequence[str],
    settings: MeasureSettings,
    env: Mapping[str, str],
    folder: pathlib.Path,
) -> Measurement:
    """Run one timed measurement of ``tool``'s pick; its log and timing go to ``folder``."""
    stem = f"{order:02d}-{tool}"
    timing_out = folder / f"{stem}.json"
    timing_out.unlink(missing_ok=True)
    port = free_port()
    result = run_logged(
        timed_command(script, ds_config_path, script_args, settings, timing_out),
        cwd=folder,
        env=single_rank_env(env, port),
        log_path=folder / f"{stem}.log",
        timeout_s=settings.timeout_s,
        memory_limit_mib=settings.memory_limit_mib,
    )
    remove_allreduce_buffers([port])
    failure = None
    if result.timed_out:
        failure = f"timed out after {settings.timeout_s:.0f} s"
    elif result.exit_code != 0:
        failure = f"exit code {result.exit_code} (see {folder / (stem + '.log')})"
    return measurement_from(tool, order, result.wall_s, read_json_or_none(timing_out), failure)


def measure_alternately(
    configs: Mapping[str, pathlib.Path],
    repeats: int,
    run_one: Callable[[str, int, pathlib.Path], Measurement],
    report: Callable[[Measurement], None] = lambda _m: None,
) -> tuple[Measurement, ...]:
    """Measure each tool's ds_config ``repeats`` times in alternation; a tool without a
    pick (not in ``configs``) is left out."""
    done: list[Measurement] = []
    for order, tool in enumerate(alternating_schedule(list(configs), repeats)):
        measurement = run_one(tool, order, configs[tool])
        report(measurement)
        done.append(measurement)
    return tuple(done)
