"""Scripts written for upstream's ``determined.pytorch.dsat``, with the import switched to
ours, driving Determined's own ``LocalSearchRunner`` against the master double over HTTP:
the scenarios of upstream's own dsat tests (a happy path, every trial failing, one
failure, a failing profile), for each of the three upstream method classes."""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

import pytest
from determined import searcher
from determined.experimental import client
from master_double import Errored, MasterDouble, TrialResult

import determined_dsat as dsat
from determined_dsat.space.ds_config import is_profiling_config
from determined_dsat.testing.synthetic import Landscape

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
REPO = pathlib.Path(__file__).resolve().parents[2]
PROFILE = Landscape.draw(5).profile.to_json()
METHODS = ("binary", "random", "asha")


@pytest.fixture(autouse=True)
def det_home(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("DET_DEBUG_CONFIG_PATH", str(tmp_path / "det-config"))
    for name in ("DET_USER", "DET_USER_TOKEN", "DET_PASS", "DET_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(client, "_determined", None)
    return tmp_path


def _model(tmp_path: pathlib.Path) -> pathlib.Path:
    model = tmp_path / "model"
    shutil.copytree(REPO / "examples" / "core_api", model)
    return model


def _search(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    simulate: Any,
    *flags: str,
) -> tuple[searcher.LocalSearchRunner, int]:
    """Upstream's script, word for word except the import: parse, build, run."""
    model = _model(tmp_path)
    with MasterDouble(simulate) as master:
        monkeypatch.setenv("DET_MASTER", master.url)
        client.login(master=master.url, user="determined", password="")
        args = dsat.get_full_parser().parse_args(
            [method, str(model / "deepspeed.yaml"), str(model), *flags]
        )
        args.experiment_id = 0
        exp_config = dsat.get_custom_dsat_exp_conf_from_args(args)
        search_method = dsat.get_search_method_class(args.search_method)(
            args=args, exp_config=exp_config
        )
        runner = searcher.LocalSearchRunner(search_method, tmp_path / "searcher")
        experiment_id = runner.run(exp_config, model_dir=str(model))
        record = master.experiment(experiment_id)
        assert record.anomalies == [] and not record.duplicate_creates()
    return runner, experiment_id


def _profile_or(result: Any) -> Any:
    def simulate(hparams: dict[str, Any], length: int) -> TrialResult:
        overwrites = hparams.get("overwrite_deepspeed_args", {})
        if is_profiling_config({"autotuning": overwrites.get("autotuning", {})}):
            return dict(PROFILE)
        return result(hparams)

    return simulate


def _mbs(hparams: dict[str, Any]) -> int:
    return int(hparams["overwrite_deepspeed_args"]["train_micro_batch_size_per_gpu"])


@pytest.mark.parametrize("method", METHODS)
def test_happy_path(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    simulate = _profile_or(lambda hp: {"throughput": float(_mbs(hp))})
    runner, _ = _search(tmp_path, monkeypatch, method, simulate, "--max-trials", "16")
    state = runner.state
    assert len(state.trials_created) == 16 == len(state.trials_closed)
    assert not state.failures and set(state.trial_progress) == state.trials_created
    assert state.experiment_completed and not state.experiment_failed


@pytest.mark.parametrize("method", METHODS)
def test_every_trial_failing(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    simulate = _profile_or(lambda hp: Errored("CUDA out of memory"))
    runner, _ = _search(tmp_path, monkeypatch, method, simulate, "--max-trials", "24")
    state = runner.state
    assert len(state.trials_created) == 24  # the reserved confirmations are handed back
    assert len(state.failures) == 23 and len(state.trials_closed) == 24
    assert state.experiment_failed and not state.experiment_completed


@pytest.mark.parametrize("method", METHODS)
def test_one_failure(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    seen: list[int] = []

    def result(hp: dict[str, Any]) -> TrialResult:
        seen.append(1)
        return Errored("boom") if len(seen) == 1 else {"throughput": float(_mbs(hp))}

    runner, _ = _search(tmp_path, monkeypatch, method, _profile_or(result), "--max-trials", "12")
    state = runner.state
    assert len(state.trials_created) == 12 and len(state.failures) == 1
    assert state.experiment_completed and not state.experiment_failed


@pytest.mark.parametrize("method", METHODS)
def test_a_failing_profile_ends_the_search(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    runner, _ = _search(
        tmp_path, monkeypatch, method, lambda hp, length: Errored("ImportError: no"), "-mt", "8"
    )
    state = runner.state
    assert len(state.trials_created) == 1 and len(state.failures) == 1
    assert state.experiment_failed and not state.experiment_completed
