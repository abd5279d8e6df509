"""The user's batch triple, resolved as DeepSpeed resolves it: every subset of the three
keys, consistent or not, checked against DeepSpeed 0.19.8's own resolution."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from determined_dsat.errors import ConfigError
from determined_dsat.space.batch import BatchConfig
from determined_dsat.space.user_batch import resolve_user_batch

KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def deepspeed_resolves(ds_config: dict[str, Any], world: int) -> BatchConfig | None:
    """DeepSpeed's own answer: its config class resolves the batch, or raises."""
    from unittest import mock

    from deepspeed.runtime import config as ds_config_module

    class _Mpu:  # DeepSpeedConfig reads the data-parallel world size from an mpu
        def get_data_parallel_world_size(self) -> int:
            return world

        def get_data_parallel_rank(self) -> int:
            return 0

    # Without a process group DeepSpeed falls back to world size 1; its rank query is the
    # only call into torch.distributed before the mpu is asked.
    with mock.patch.object(ds_config_module.dist, "get_rank", return_value=0):
        try:
            cfg = ds_config_module.DeepSpeedConfig(dict(ds_config), mpu=_Mpu())
        except AssertionError:
            return None
    assert cfg.world_size == world
    return BatchConfig(
        cfg.train_batch_size, cfg.train_micro_batch_size_per_gpu, cfg.gradient_accumulation_steps
    )


def test_the_commonest_upstream_config_runs_mbs_128_on_2_slots() -> None:
    batch = resolve_user_batch({"train_batch_size": 256}, 2, "ds_config.json")
    assert batch == BatchConfig(256, 128, 1)


@given(
    tbs=st.integers(1, 512),
    mbs=st.integers(1, 64),
    gas=st.integers(1, 16),
    world=st.sampled_from([1, 2, 4, 8]),
    subset=st.sampled_from(
        [c for n in (1, 2, 3) for c in itertools.combinations(range(3), n) if set(c) != {2}]
    ),
)
def test_every_subset_agrees_with_deepspeed(
    tbs: int, mbs: int, gas: int, world: int, subset: tuple[int, ...]
) -> None:
    values = (tbs, mbs, gas)
    ds_config = {KEYS[i]: values[i] for i in subset}
    expected = deepspeed_resolves(ds_config, world)
    if expected is None:
        with pytest.raises(ConfigError, match="inconsistent batch settings"):
            resolve_user_batch(ds_config, world, "ds_config.json")
    else:
        assert resolve_user_batch(ds_config, world, "ds_config.json") == expected


@pytest.mark.parametrize(
    ("ds_config", "slots", "expected"),
    [
        ({"train_batch_size": 256}, 2, (256, 128, 1)),
        ({"train_micro_batch_size_per_gpu": 8}, 4, (32, 8, 1)),
        ({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4}, 2, (64, 4, 8)),
        ({"train_batch_size": 64, "gradient_accumulation_steps": 4}, 2, (64, 8, 4)),
        ({"train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 2}, 2, (12, 3, 2)),
        ({"train_batch_size": 12, "train_micro_batch_size_per_gpu": 3,
          "gradient_accumulation_steps": 2}, 2, (12, 3, 2)),
    ],
)  # fmt: skip
def test_consistent_subsets(
    ds_config: dict[str, Any], slots: int, expected: tuple[int, ...]
) -> None:
    assert resolve_user_batch(ds_config, slots, "c.json") == BatchConfig(*expected)


@pytest.mark.parametrize(
    ("ds_config", "slots"),
    [
        ({"train_batch_size": 12, "train_micro_batch_size_per_gpu": 3,
          "gradient_accumulation_steps": 3}, 2),
        ({"train_batch_size": 10, "train_micro_batch_size_per_gpu": 4}, 2),
        ({"train_batch_size": 3}, 2),
        ({"train_batch_size": 8, "gradient_accumulation_steps": 16}, 1),
    ],
)  # fmt: skip
def test_inconsistent_subsets_are_one_line_errors(ds_config: dict[str, Any], slots: int) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_user_batch(ds_config, slots, "ds_config.json")
    message = str(info.value)
    assert message.startswith("ds_config.json: inconsistent batch settings")
    assert "\n" not in message and f"{slots} slot(s)" in message


def test_auto_values_take_the_trainers_arguments() -> None:
    auto = {k: "auto" for k in KEYS}
    assert resolve_user_batch(auto, 2, "c.json") is None
    assert resolve_user_batch(auto, 2, "c.json", hf=(4, 2)) == BatchConfig(16, 4, 2)
    with pytest.raises(ConfigError, match="positive integer"):
        resolve_user_batch({"train_batch_size": "64"}, 1, "c.json")
