"""The executor contract, one suite for every executor: the replay executor, and the local
executor with a fake trial process (a tiny script standing in for a DeepSpeed trial).

A trial's hyperparameters say how it should end (``fake_outcome``); every executor must
return each launched trial exactly once, with that outcome, keep ``num_running`` right,
stop everything on ``cancel_all``, and offer JSON-able state (or None)."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from determined_dsat.runners import rank
from determined_dsat.runners.devices import Slots
from determined_dsat.runners.entrypoint import parse_entrypoint
from determined_dsat.runners.executor import TrialExecutor
from determined_dsat.runners.local import LocalExecutor, LocalTrialOptions
from determined_dsat.runners.replay import ReplayExecutor, ReplayFunction
from determined_dsat.space.ds_config import AUTOTUNING_KEY, OVERWRITE_KEY
from determined_dsat.trials.records import Outcome

FAKE_TRIAL = """
import json, pathlib, sys
sheet = json.loads(pathlib.Path("dsat_trial.json").read_text())
outcome = sheet["hparams"]["fake_outcome"]
if outcome == "ok":
    pathlib.Path("autotuning_metric.json").write_text(json.dumps({"throughput": 7.0}))
    sys.exit(0)
if outcome == "oom":
    print("RuntimeError: CUDA out of memory", file=sys.stderr)
    sys.exit(1)
if outcome == "stubborn":
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pathlib.Path("stubborn.ready").write_text("")
if outcome in ("hang", "stubborn"):
    import time
    time.sleep(600)
print("Traceback (most recent call last):\\nValueError: broken", file=sys.stderr)
sys.exit(3)
"""


def hparams(outcome: str) -> dict[str, Any]:
    return {
        "fake_outcome": outcome,
        OVERWRITE_KEY: {AUTOTUNING_KEY: {"enabled": True}, "train_micro_batch_size_per_gpu": 1},
    }


def _replay(tmp_path: pathlib.Path) -> TrialExecutor:
    def measure(ds_config: dict[str, Any]) -> dict[str, Any]:
        outcome = ds_config["fake_outcome"]
        if outcome == "oom":
            raise MemoryError("fake")
        if outcome == "error":
            raise ValueError("broken")
        return {"throughput": 7.0, "duration_s": 2.0}

    def ds_config_of(hp: Mapping[str, Any]) -> dict[str, Any]:
        return {"fake_outcome": hp["fake_outcome"]}

    return ReplayExecutor(ReplayFunction(measure, "fake", errors_as_trials=True), ds_config_of)


def _local(tmp_path: pathlib.Path) -> TrialExecutor:
    model = tmp_path / "model"
    model.mkdir()
    (model / "fake.py").write_text(FAKE_TRIAL)
    options = LocalTrialOptions(
        experiment_config={"searcher": {"name": "custom", "metric": "throughput"}},
        model_dir=model,
        command=parse_entrypoint("python3 fake.py", "test"),
        slots_per_trial=1,
        trial_timeout_s=120.0,
    )
    trials = tmp_path / "run" / "trials"

    def trial_dir(request_id: str) -> pathlib.Path:
        d = trials / request_id
        d.mkdir(parents=True, exist_ok=True)
        return d

    return LocalExecutor(options, Slots(ids=(0, 1, 2, 3), gpu=False), trial_dir)


EXECUTORS: dict[str, Callable[[pathlib.Path], TrialExecutor]] = {
    "replay": _replay,
    "local": _local,
}


@pytest.fixture(params=sorted(EXECUTORS))
def executor(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[TrialExecutor]:
    made = EXECUTORS[request.param](tmp_path)
    try:
        yield made
    finally:
        made.cancel_all()


def test_every_launched_trial_completes_once_with_its_outcome(executor: TrialExecutor) -> None:
    wanted = {"t-ok": Outcome.OK, "t-oom": Outcome.OOM, "t-err": Outcome.ERROR}
    for rid, outcome in wanted.items():
        executor.launch(rid, hparams(outcome.value), 5)
    assert executor.num_running == 3
    seen = {}
    while executor.num_running:
        completion = executor.next_completion()
        assert completion.request_id not in seen
        assert completion.length == 5
        seen[completion.request_id] = completion.result
    assert {rid: r.outcome for rid, r in seen.items()} == wanted
    assert seen["t-ok"].metrics["throughput"] == pytest.approx(7.0)
    assert seen["t-ok"].duration_s is not None and seen["t-ok"].duration_s > 0
    assert all(r.detail for rid, r in seen.items() if rid != "t-ok")


def test_cancel_all_stops_everything(executor: TrialExecutor) -> None:
    executor.launch("a", hparams("hang" if isinstance(executor, LocalExecutor) else "ok"), 1)
    executor.launch("b", hparams("ok"), 1)
    executor.cancel_all()
    assert executor.num_running == 0
    executor.launch("c", hparams("ok"), 1)  # the slots were given back
    assert executor.next_completion().request_id == "c"


def test_state_is_json_or_none(executor: TrialExecutor) -> None:
    executor.launch("a", hparams("ok"), 1)
    state = executor.state_dict()
    assert state is None or json.loads(json.dumps(state)) == state
    executor.take("not-running")  # unknown ids are ignored
    assert executor.num_running == 1


def test_the_base_class_defaults() -> None:
    class Minimal(TrialExecutor):
        def launch(self, request_id: str, hparams: Mapping[str, Any], length: int) -> None: ...

        def next_completion(self) -> Any:
            raise AssertionError

        @property
        def num_running(self) -> int:
            return 0

        def cancel_all(self) -> None: ...

    minimal = Minimal()
    assert minimal.state_dict() is None
    minimal.take("x")
    minimal.load_state_dict({})
    with pytest.raises(TypeError):
        TrialExecutor()  # type: ignore[abstract]


def test_cancel_all_waits_one_grace_period_for_all_trials(tmp_path: pathlib.Path) -> None:
    """Trials that ignore SIGTERM are killed after one grace period in all, not one each."""
    executor = _local(tmp_path)
    names = ["s1", "s2", "s3"]
    for name in names:
        executor.launch(name, hparams("stubborn"), 1)
    ready = [tmp_path / "run" / "trials" / name / "stubborn.ready" for name in names]
    deadline = time.monotonic() + 60
    while not all(p.exists() for p in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(p.exists() for p in ready)
    started = time.monotonic()
    executor.cancel_all()
    took = time.monotonic() - started
    assert executor.num_running == 0
    assert rank.KILL_GRACE_S <= took < 2 * rank.KILL_GRACE_S, took
