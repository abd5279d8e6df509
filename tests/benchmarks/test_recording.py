"""The benchmarks' replay source and recording executor: simulated durations (OOMs
included), run-seeded noise, the log's values and finish times."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from benchmarks.families.api import KnobTables
from benchmarks.recording import LandscapeSource, RecordingExecutor, true_value
from determined_dsat.space.ds_config import OVERWRITE_KEY, merge_overwrites
from determined_dsat.trials.records import Outcome

PROFILE = {"train_micro_batch_size_per_gpu": 1, "autotuning": {"model_info": {"profile": True}}}
MAX_MBS = 8


class Line:
    """A tiny landscape: throughput 10 x mbs up to MAX_MBS, a trial takes 100 s + mbs s, an
    OOM 7 s; the measured value is the noise-free one times a seed-derived factor."""

    key = "line-00"
    slots = 1

    def describe(self) -> Mapping[str, Any]:
        return {"key": self.key}

    def profile_metrics(self) -> dict[str, int]:
        return {"num_params": 1, "trainable_num_params": 1, "activation_mem_per_gpu": 1,
                "gpu_mem": 1}  # fmt: skip

    def true_throughput(self, ds_config: Mapping[str, Any]) -> float | None:
        mbs = int(ds_config["train_micro_batch_size_per_gpu"])
        return 10.0 * mbs if mbs <= MAX_MBS else None

    def measure(self, ds_config: Mapping[str, Any], trial_seed: int) -> dict[str, float]:
        value = self.true_throughput(ds_config)
        if value is None:
            raise MemoryError("too big")
        mbs = int(ds_config["train_micro_batch_size_per_gpu"])
        factor = 1.0 + (trial_seed % 1000) / 1e5
        return {"throughput": value * factor, "duration_s": 100.0 + mbs}

    def oom_duration_s(self, ds_config: Mapping[str, Any]) -> float:
        return 7.0

    def expected_duration_s(self, ds_config: Mapping[str, Any]) -> float:
        return 55.0

    def optimum(self, tables: KnobTables, stages: Sequence[int]) -> float:
        return 10.0 * MAX_MBS

    def __call__(self, ds_config: dict[str, Any]) -> dict[str, Any]:
        return dict(self.profile_metrics())


def config(mbs: int) -> dict[str, Any]:
    return {"train_micro_batch_size_per_gpu": mbs, "zero_optimization": {"stage": 2}}


def test_trials_take_the_landscapes_durations_and_an_oom_its_oom_duration() -> None:
    source = LandscapeSource(Line(), run_seed=1)
    ok = source.evaluate(config(4))
    assert ok.outcome is Outcome.OK and ok.duration_s == 104.0
    assert "duration_s" not in ok.metrics
    oom = source.evaluate(config(9))
    assert oom.outcome is Outcome.OOM and oom.duration_s == 7.0
    profile = source.evaluate(dict(PROFILE))
    assert profile.outcome is Outcome.OK and profile.duration_s == 55.0  # expected_duration_s
    assert profile.metrics["num_params"] == 1


def test_noise_depends_on_the_run_seed_and_on_the_re_measurement() -> None:
    def measures(seed: int) -> list[float]:
        source = LandscapeSource(Line(), run_seed=seed)
        return [float(source.evaluate(config(2)).metrics["throughput"]) for _ in range(3)]

    first = measures(1)
    assert first == measures(1)  # reproducible
    assert len(set(first)) == 3  # every re-measurement draws fresh noise
    assert first != measures(2)


def test_true_value_is_zero_for_the_profile_and_an_oom() -> None:
    assert true_value(Line(), config(3)) == 30.0
    assert true_value(Line(), config(9)) == 0.0
    assert true_value(Line(), dict(PROFILE)) == 0.0


def ds_config_of(hparams: Mapping[str, Any]) -> dict[str, Any]:
    return merge_overwrites({}, hparams.get(OVERWRITE_KEY) or {})


def hparams(mbs: int) -> dict[str, Any]:
    return {OVERWRITE_KEY: config(mbs)}


def test_the_log_holds_completion_order_values_and_the_simulated_finish_times() -> None:
    executor = RecordingExecutor(Line(), ds_config_of, run_seed=3, kind_of=lambda rid: "baseline"
                                 if rid == "a" else None)  # fmt: skip
    executor.launch("a", hparams(8), 1)  # 108 s
    executor.launch("b", hparams(20), 1)  # OOM after 7 s
    executor.next_completion()
    executor.launch("c", hparams(1), 1)  # starts at 7 s, 101 s long
    executor.next_completion()
    executor.next_completion()
    log = executor.log
    assert [t.seq for t in log] == [1, 2, 3]
    assert [t.outcome for t in log] == ["oom", "ok", "ok"]
    assert [t.finish_s for t in log] == pytest.approx([7.0, 108.0, 108.0])
    assert [t.value for t in log] == [0.0, 80.0, 10.0]
    assert [t.kind for t in log] == ["search", "baseline", "search"]
    assert [t.mbs for t in log] == [20, 8, 1]
    assert executor.clock_s == pytest.approx(108.0)
