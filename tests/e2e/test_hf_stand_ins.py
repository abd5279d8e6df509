"""The local stand-in that lets HF accelerate see every CPU rank of a trial (no DeepSpeed run).

Each case runs in a fresh interpreter: ``install`` patches ``determined`` and the import
system of the process it runs in.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from hf_support import require_hf

from determined_dsat.integration.local_context import TrialSheet

PROBE = """
import json, sys
from determined_dsat.integration.local_context import TrialSheet, install
install(TrialSheet.read(__import__("pathlib").Path(sys.argv[1])))
from accelerate.state import PartialState
backend, kind = PartialState._prepare_backend(object.__new__(PartialState), False, False, None)
cpu_backend, _ = PartialState._prepare_backend(object.__new__(PartialState), True, False, None)
print(json.dumps({"backend": backend, "kind": str(kind), "cpu_backend": cpu_backend}))
"""


def _probe(tmp_path: pathlib.Path, **env: str) -> dict[str, str | None]:
    require_hf()
    sheet = TrialSheet(
        hparams={},
        experiment_config={},
        length=6,
        checkpoint_dir=str(tmp_path / "checkpoints"),
        metrics_path=str(tmp_path / "metrics.jsonl"),
    )
    sheet.write(tmp_path / "sheet.json")
    environment = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "LOCAL_RANK")}
    environment.update(env, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "sheet.json")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, str | None] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_two_cpu_ranks_get_gloo(tmp_path: pathlib.Path) -> None:
    got = _probe(tmp_path, DS_ACCELERATOR="cpu", WORLD_SIZE="2", LOCAL_RANK="0", RANK="0")
    assert got["backend"] == "gloo"
    assert got["kind"].endswith("NO")  # accelerate turns it into DEEPSPEED itself
    # --use_cpu (cpu=True) already works and keeps accelerate's own choice.
    assert got["cpu_backend"] in ("gloo", "mpi")


@pytest.mark.parametrize(
    "env",
    [
        {"DS_ACCELERATOR": "cpu", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "RANK": "0"},
        {"DS_ACCELERATOR": "cuda", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "RANK": "0"},
    ],
)
def test_accelerate_is_left_alone_otherwise(tmp_path: pathlib.Path, env: dict[str, str]) -> None:
    assert _probe(tmp_path, **env)["backend"] is None
