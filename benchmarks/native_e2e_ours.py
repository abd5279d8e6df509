"""Driving our ``dsat`` (``python3 -m determined_dsat METHOD ... --backend local``) on the
benchmark's model, and reading its run directory.

Our dsat takes a Determined experiment: the benchmark writes a model directory holding a
link to ``e2e_models/train.py`` and the user's ``ds_config.json``, and an experiment
yaml whose entrypoint is Determined's DeepSpeed launcher with the script's model
arguments, as a user would.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import yaml

from benchmarks.native_e2e_records import ModelCase, Pick, read_json_or_none
from determined_dsat.store.layout import BEST_CONFIG_FILE, BEST_METRICS_FILE, TRIALS_FILE

MAX_MBS_FLAG = "--max-mbs"
SEARCHER_LENGTH = 20  # batches; search trials end at DeepSpeed's end profile step anyway


def experiment_config(model: ModelCase, script_args: Sequence[str]) -> dict[str, Any]:
    """The Determined experiment for ``model``: one slot per trial, Core API entrypoint."""
    return {
        "name": f"native-e2e-{model.name}",
        "entrypoint": " ".join(
            ["python3 -m determined.launch.deepspeed python3 train.py", *script_args]
        ),
        "hyperparameters": {"deepspeed_config": "ds_config.json"},
        "resources": {"slots_per_trial": 1},
        "searcher": {
            "name": "single",
            "metric": "loss",
            "smaller_is_better": True,
            "max_length": {"batches": SEARCHER_LENGTH},
        },
        "max_restarts": 0,
    }


def prepare_experiment(
    folder: pathlib.Path,
    model: ModelCase,
    script: pathlib.Path,
    script_args: Sequence[str],
    base_ds_config: Mapping[str, Any],
) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``folder/model/`` (a link to the script, ``ds_config.json``) and
    ``folder/experiment.yaml``; returns (yaml path, model dir)."""
    model_dir = folder / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    link = model_dir / "train.py"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(script.resolve())
    (model_dir / "ds_config.json").write_text(json.dumps(base_ds_config, indent=2) + "\n")
    config_path = folder / "experiment.yaml"
    config_path.write_text(yaml.safe_dump(experiment_config(model, script_args), sort_keys=False))
    return config_path, model_dir


def dsat_command(
    python: str,
    method: str,
    config_path: pathlib.Path,
    model_dir: pathlib.Path,
    run_dir: pathlib.Path,
    *,
    stages: Sequence[int],
    start_profile_step: int | None,
    end_profile_step: int | None,
    cap: int | None,
    memory_limit_mib: int,
) -> list[str]:
    """Our dsat with its defaults except: local backend, one trial at a time, the run
    directory, the stages both tools use, the profile steps (both None:
    ``--auto-profile-window``), the micro-batch cap (None: ours has none) and the
    per-process memory cap (0: none) both tools share."""
    command = [
        python,
        "-m",
        "determined_dsat",
        method,
        str(config_path),
        str(model_dir),
        "--backend",
        "local",
        "--max-concurrent-trials",
        "1",
        "--run-dir",
        str(run_dir),
        "--zero-stages",
        *(str(s) for s in stages),
    ]
    if start_profile_step is None and end_profile_step is None:
        command.append("--auto-profile-window")
    if start_profile_step is not None:
        command += ["--start-profile-step", str(start_profile_step)]
    if end_profile_step is not None:
        command += ["--end-profile-step", str(end_profile_step)]
    if cap is not None:
        command += [MAX_MBS_FLAG, str(cap)]
    if memory_limit_mib > 0:
        command += ["--trial-memory-limit", str(memory_limit_mib)]
    return command


def dsat_knows(python: str, method: str, flag: str, env: Mapping[str, str]) -> bool:
    """Whether the installed dsat's ``METHOD --help`` lists ``flag``."""
    done = subprocess.run(
        [python, "-m", "determined_dsat", method, "--help"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", done.stdout) is not None


@attrs.frozen
class OursFindings:
    """What one dsat run left: its trials' (kind, status) in completion order, its best
    ds_config and that config's throughput as dsat reported it (the median once
    re-measured)."""

    trials: tuple[tuple[str, str], ...]
    ds_config: Mapping[str, Any] | None
    metric: float | None

    @property
    def trial_count(self) -> int:
        return len(self.trials)

    @property
    def outcomes(self) -> dict[str, int]:
        return dict(Counter(status for _kind, status in self.trials))

    @property
    def kinds(self) -> dict[str, int]:
        return dict(Counter(kind for kind, _status in self.trials))

    @property
    def pick(self) -> Pick | None:
        return None if self.ds_config is None else Pick.from_ds_config(self.ds_config)

    @property
    def notes(self) -> tuple[str, ...]:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items()))
        return (f"trials by kind: {kinds}",) if kinds else ()


def read_trials(path: pathlib.Path) -> list[tuple[str, str]]:
    """(kind, status) of every complete line of ``trials.jsonl`` (a torn last line of a
    stopped run is skipped)."""
    if not path.exists():
        return []
    rows: list[tuple[str, str]] = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append((str(row.get("kind", "?")), str(row.get("status", "?"))))
    return rows


def read_findings(run_dir: pathlib.Path, metric: str = "throughput") -> OursFindings:
    """Read a (finished or stopped) dsat run directory."""
    trials = tuple(read_trials(run_dir / TRIALS_FILE))
    config = read_json_or_none(run_dir / BEST_CONFIG_FILE)
    metrics = read_json_or_none(run_dir / BEST_METRICS_FILE)
    value = metrics.get(metric) if isinstance(metrics, dict) else None
    return OursFindings(
        trials=trials,
        ds_config=config if isinstance(config, dict) else None,
        metric=float(value) if isinstance(value, (int, float)) else None,
    )
