"""The upstream public API (``determined.pytorch.dsat`` of determined 0.37) on our search:
every public name, with upstream's signatures, and scripts written against it."""

from __future__ import annotations

import argparse
import inspect
import pathlib
import shutil
from typing import Any

import pytest
from determined import searcher
from determined.pytorch import dsat as upstream
from hypothesis import given
from hypothesis import strategies as st

import determined_dsat as dsat
from determined_dsat.methods.phases import _room_keeping
from determined_dsat.runners.engine import SearchEngine
from determined_dsat.runners.replay import ReplayExecutor, ReplayFunction
from determined_dsat.testing.synthetic import Landscape

REPO = pathlib.Path(__file__).resolve().parents[1]
INTERNAL = {  # upstream's data classes, with no counterpart here
    "DSATTrial", "DSATTrialTracker", "DSATModelProfileInfoTrial", "ASHADSATSearchData",
    "DSATSearchData", "TestDSATSearchMethod",
}  # fmt: skip


def upstream_names() -> list[str]:
    source = pathlib.Path(upstream.__file__).read_text()
    names = [n for n in dir(upstream) if not n.startswith("_") and n in source]
    return sorted(set(names) - INTERNAL - {"defaults"})


def test_every_public_name_of_upstream_is_here() -> None:
    names = upstream_names()
    assert "get_search_method_class" in names and "ASHADSATSearchMethod" in names
    missing = [n for n in names if not hasattr(dsat, n)]
    assert missing == []
    assert set(names) <= set(dsat.__all__)


@pytest.mark.parametrize("name", upstream_names())
def test_upstreams_signatures_hold(name: str) -> None:
    """Every parameter of upstream's callable is ours too, in the same place, with the same
    default; ours may add optional parameters at the end."""
    theirs, ours = getattr(upstream, name), getattr(dsat, name)
    if inspect.isclass(theirs):
        theirs, ours = theirs.__init__, ours.__init__
        if any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(theirs).parameters.values()):
            theirs = upstream.BaseDSATSearchMethod.__init__  # (*args, **kwargs) pass through
    a = list(inspect.signature(theirs).parameters.values())
    b = list(inspect.signature(ours).parameters.values())
    assert [p.name for p in a] == [p.name for p in b[: len(a)]], name
    for p, q in zip(a, b):
        assert p.default == q.default or (
            isinstance(p.default, pathlib.Path) and str(p.default) == str(q.default)
        ), (name, p.name)
    assert all(q.default is not inspect.Parameter.empty for q in b[len(a) :]), name


def _project(tmp_path: pathlib.Path) -> pathlib.Path:
    model = tmp_path / "replay"
    shutil.copytree(REPO / "examples" / "replay", model)
    return model


def _args(model: pathlib.Path, method: str, *extra: str) -> argparse.Namespace:
    replay = f"{model / 'landscape.py'}:measure"
    argv = [method, str(model / "deepspeed.yaml"), str(model), "--backend", "replay",
            "--replay-source", replay, *extra]  # fmt: skip
    args = dsat.get_full_parser().parse_args(argv)
    args.experiment_id = 0
    return args


def _run(method: searcher.SearchMethod, measure: Any) -> SearchEngine:
    def ds_config_of(hparams: Any) -> dict[str, Any]:
        return dict(method.driver.space.ds_config_from_hparams(hparams))  # type: ignore[attr-defined]

    engine = SearchEngine(method, ReplayExecutor(ReplayFunction(measure, "t"), ds_config_of))
    engine.start()
    engine.run()
    return engine


def test_a_script_written_for_upstream_runs_a_search(tmp_path: pathlib.Path) -> None:
    model = _project(tmp_path)
    args = _args(model, "asha", "--max-trials", "20", "--max-concurrent-trials", "4")
    assert args.search_method == "asha" and args.method == "asha"
    exp_config = dsat.get_custom_dsat_exp_conf_from_args(args)
    assert exp_config["searcher"]["name"] == "custom"
    runner_config = dsat.get_search_runner_config_from_args(args)
    assert runner_config["resources"]["slots_per_trial"] == 0
    cls = dsat.get_search_method_class(args.search_method)
    assert cls is dsat.ASHADSATSearchMethod
    method = cls(args=args, exp_config=exp_config)
    engine = _run(method, Landscape.draw(11))
    assert engine.shutdown is not None and not engine.shutdown.failure
    assert len(engine.state.trials_created) == 20
    assert method.best_ds_config() is not None
    with pytest.raises(ValueError, match="must be one of"):
        dsat.get_search_method_class("_test")


def _always_oom(ds_config: dict[str, Any]) -> dict[str, Any]:
    from determined_dsat.space.ds_config import is_profiling_config

    if is_profiling_config(ds_config):
        return dict(Landscape.draw(11).profile.to_json())
    raise MemoryError("never fits")


@pytest.mark.parametrize("method", ["binary", "random", "asha", "model"])
def test_every_trial_failing_still_creates_max_trials(tmp_path: pathlib.Path, method: str) -> None:
    args = _args(_project(tmp_path), method, "--max-trials", "64", "-mct", "16")
    search = dsat.get_search_method_class(method)(args=args, exp_config={})
    engine = _run(search, _always_oom)
    assert len(engine.state.trials_created) == 64
    assert engine.shutdown is not None and engine.shutdown.failure


@given(budget=st.integers(-3, 80), k=st.integers(0, 5), could=st.integers(0, 70))
def test_the_room_keeps_a_remeasurement_for_each_config_that_may_train(
    budget: int, k: int, could: int
) -> None:
    n = _room_keeping(budget, k, could)
    free = budget - min(k, could)
    assert 0 <= n <= max(0, free)
    assert (n == 0) == (free <= 0)  # room while the budget beyond the reservation allows
    if n >= 2:
        assert n + min(k, could + n) <= budget
    if n >= 1:  # and it is the most that keeps the reservation, or the one trial allowed
        assert n == 1 or (n + 1) + min(k, could + n + 1) > budget
