"""How the profiling window changes DeepSpeed's throughput metric: bias, spread and cost.

Each run is one DeepSpeed autotuning experiment of the end-to-end benchmark's training
script (``e2e_models/train.py``) with ``autotuning.start_profile_step`` and
``end_profile_step`` set to a window; DeepSpeed writes its metric and exits. The windows
and micro-batches are interleaved (every window once, then again, ...), so a slow spell
of the machine hits them alike. A reference per micro-batch is a long timed run (3
warm-up steps, then 10 steps timed on the host). Reported per micro-batch and window:
the median metric over the reference (bias), the log-scale sd over repeats (noise) and
the median wall seconds of a run (cost).

    python -m benchmarks.profile_window                      # GPT, mbs 8 and 32
    python -m benchmarks.profile_window --mbs 4 16 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from benchmarks.e2e_models.models import format_dims
from benchmarks.native_e2e import BASE_DS_CONFIG, MODELS_FULL, SCRIPT
from benchmarks.native_e2e_proc import free_port, run_logged
from determined_dsat.jsonio import write_json_atomic, write_text_atomic

REPO = pathlib.Path(__file__).resolve().parents[1]
WINDOWS = ((1, 2), (1, 3), (2, 3), (2, 5), (3, 5))


def parse_window(text: str) -> tuple[int, int]:
    start, _, end = text.partition("-")
    window = (int(start), int(end))
    if not 0 <= window[0] <= window[1]:
        raise argparse.ArgumentTypeError(f"window {text!r}: want START-END, 0 <= START <= END")
    return window


def ds_config(mbs: int, stage: int, window: tuple[int, int] | None) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(json.dumps(BASE_DS_CONFIG))
    config["train_micro_batch_size_per_gpu"] = mbs
    config["train_batch_size"] = mbs
    config["zero_optimization"] = {"stage": stage}
    if window is not None:
        config["autotuning"] = {
            "enabled": True,
            "start_profile_step": window[0],
            "end_profile_step": window[1],
            "metric_path": "autotuning_metric.json",
        }
    return config


def one_run(
    model: str, mbs: int, stage: int, window: tuple[int, int] | None, work: pathlib.Path
) -> tuple[float, float]:
    """(samples/s, wall seconds) of one run; the metric is DeepSpeed's (a window) or the
    host-timed reference (None)."""
    case = MODELS_FULL[model]
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / "ds_config.json"
    config_path.write_text(json.dumps(ds_config(mbs, stage, window)))
    timing = work / "timing.json"
    command = [sys.executable, str(SCRIPT), "--model", case.kind, "--dims",
               format_dims(case.dims), "--deepspeed_config", str(config_path)]  # fmt: skip
    if window is None:
        command += ["--warmup-steps", "3", "--timed-steps", "10", "--timing-out", str(timing)]
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", RANK="0",
               LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               PYTHONPATH=str(REPO))  # fmt: skip
    result = run_logged(command, cwd=work, env=env, log_path=work / "log.txt", timeout_s=600)
    if window is None:
        value = float(json.loads(timing.read_text())["samples_per_second"])
    else:
        value = float(json.loads((work / "autotuning_metric.json").read_text())["throughput"])
    return value, result.wall_s


def log_sd(values: Sequence[float]) -> float:
    logs = [math.log(v) for v in values]
    return statistics.stdev(logs) if len(logs) >= 2 else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt", choices=sorted(MODELS_FULL))
    parser.add_argument("--mbs", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--stage", type=int, default=0)
    parser.add_argument("--windows", type=parse_window, nargs="+", default=list(WINDOWS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path,
                        default=REPO / "benchmarks" / "results" / "profile_window")  # fmt: skip
    a = parser.parse_args(argv)
    runs: dict[str, list[tuple[float, float]]] = {}
    plan: list[tuple[int, tuple[int, int] | None]] = [
        (mbs, window) for mbs in a.mbs for window in [None, *a.windows]
    ]
    with tempfile.TemporaryDirectory(prefix="profile-window-") as tmp:
        for repeat in range(a.repeats):
            for i, (mbs, window) in enumerate(plan):
                key = f"{mbs}/{'reference' if window is None else f'{window[0]}-{window[1]}'}"
                value, seconds = one_run(a.model, mbs, a.stage, window, pathlib.Path(tmp) / str(i))
                runs.setdefault(key, []).append((value, seconds))
                print(f"repeat {repeat + 1}: mbs {key}: {value:.2f} samples/s, {seconds:.1f} s",
                      flush=True)  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out / "profile_window.json", {"args": sys.argv[1:], "runs": runs})
    write_text_atomic(a.out / "profile_window.md", report(a.mbs, a.windows, runs))
    print(report(a.mbs, a.windows, runs))


def report(
    mbs_list: Sequence[int],
    windows: Sequence[tuple[int, int]],
    runs: dict[str, list[tuple[float, float]]],
) -> str:
    lines = [
        "| mbs | window (start-end) | measured steps | median / reference | log sd | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for mbs in mbs_list:
        reference = statistics.median(v for v, _ in runs[f"{mbs}/reference"])
        ref_wall = statistics.median(s for _, s in runs[f"{mbs}/reference"])
        ref_sd = log_sd([v for v, _ in runs[f"{mbs}/reference"]])
        lines.append(
            f"| {mbs} | reference (3 warm-up + 10 timed) | 10 | 1.000 | {ref_sd:.3f} | "
            f"{ref_wall:.1f} |"
        )
        for start, end in windows:
            got = runs[f"{mbs}/{start}-{end}"]
            values = [v for v, _ in got]
            lines.append(
                f"| {mbs} | {start}-{end} | {end - start + 1} | "
                f"{statistics.median(values) / reference:.3f} | {log_sd(values):.3f} | "
                f"{statistics.median(s for _, s in got):.1f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
