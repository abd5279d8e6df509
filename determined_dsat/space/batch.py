"""Batch-size arithmetic: which micro-batches are allowed and the matching accumulation.

DeepSpeed requires ``train_batch_size == mbs * gas * world_size``. With a fixed
``--train-batch-size`` only micro-batches that divide ``train_batch_size / slots``
are reachable; with ``--divisible-by d`` only multiples of ``d`` are.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

import attrs

from determined_dsat.errors import ConfigError

GAS_DEFAULT = 1


@attrs.frozen
class SearchBounds:
    """Inclusive micro-batch range still worth trying in a lineage.

    ``hi_is_hard`` is False while ``hi`` is only the memory model's estimate: a success
    at ``hi`` then widens the range upward instead of ending the search.
    ``probe_ceiling`` is True right after such a widening: the next probe is ``hi``
    itself (galloping), so finding a far-away limit costs O(log) trials.
    """

    lo: int
    hi: int
    hi_is_hard: bool = False
    probe_ceiling: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "lo": self.lo,
            "hi": self.hi,
            "hi_is_hard": self.hi_is_hard,
            "probe_ceiling": self.probe_ceiling,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SearchBounds:
        return cls(
            lo=int(d["lo"]),
            hi=int(d["hi"]),
            hi_is_hard=bool(d.get("hi_is_hard", False)),
            probe_ceiling=bool(d.get("probe_ceiling", False)),
        )


@attrs.frozen
class BatchConfig:
    """A consistent triple of DeepSpeed batch settings."""

    train_batch_size: int
    train_micro_batch_size_per_gpu: int
    gradient_accumulation_steps: int

    def to_overwrites(self) -> dict[str, int]:
        return {
            "train_batch_size": self.train_batch_size,
            "train_micro_batch_size_per_gpu": self.train_micro_batch_size_per_gpu,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }


def configured_gas(ds_config: Mapping[str, Any]) -> int:
    """The user's ``gradient_accumulation_steps``; ``"auto"`` (HF) and absence mean 1."""
    gas = ds_config.get("gradient_accumulation_steps", GAS_DEFAULT)
    if isinstance(gas, bool) or not isinstance(gas, int) or gas < 1:
        return GAS_DEFAULT
    return gas


@attrs.frozen
class MicroBatchGrid:
    """The set of micro-batch sizes a search may propose, and the gas that goes with each.

    ``slots`` is the world size of one trial. ``default_gas`` is used when the global
    batch is free (no ``train_batch_size``); with a fixed global batch no micro-batch can
    exceed ``train_batch_size / slots``. ``mbs_cap`` (``--max-mbs``, like DeepSpeed's
    ``max_train_micro_batch_size_per_gpu``) bounds every micro-batch of every method.
    """

    slots: int
    default_gas: int = GAS_DEFAULT
    train_batch_size: int | None = None
    divisible_by: int = 1
    mbs_cap: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.slots < 1:
            raise ConfigError(f"slots per trial must be at least 1, got {self.slots}")
        if self.divisible_by < 1:
            raise ConfigError(f"--divisible-by must be a positive integer, got {self.divisible_by}")
        if self.mbs_cap is not None and self.mbs_cap < self.divisible_by:
            raise ConfigError(
                f"--max-mbs {self.mbs_cap} allows no micro-batch divisible by {self.divisible_by}"
            )
        if self.train_batch_size is not None and not self.fixed_candidates():
            raise ConfigError(
                f"--train-batch-size {self.train_batch_size} cannot be reached with "
                f"{self.slots} slot(s) per trial and micro-batches divisible by "
                f"{self.divisible_by}: it must be a multiple of "
                f"{self.slots * self.divisible_by}"
            )

    def fixed_candidates(self) -> list[int]:
        """All allowed micro-batches when the global batch is fixed, ascending."""
        assert self.train_batch_size is not None
        if self.train_batch_size % self.slots:
            return []
        per_slot = self.train_batch_size // self.slots
        top = per_slot if self.mbs_cap is None else min(per_slot, self.mbs_cap)
        return [
            m for m in range(self.divisible_by, top + 1, self.divisible_by) if per_slot % m == 0
        ]

    @property
    def max_mbs(self) -> int | None:
        """The largest micro-batch the grid allows, or None when unbounded."""
        if self.train_batch_size is None:
            return None if self.mbs_cap is None else self.snap_down(self.mbs_cap)
        return self.fixed_candidates()[-1]

    @property
    def min_mbs(self) -> int:
        if self.train_batch_size is None:
            return self.divisible_by
        return self.fixed_candidates()[0]

    def allowed(self, mbs: int) -> bool:
        if mbs < 1 or mbs % self.divisible_by:
            return False
        if self.mbs_cap is not None and mbs > self.mbs_cap:
            return False
        if self.train_batch_size is None:
            return True
        return (self.train_batch_size // self.slots) % mbs == 0 and self.train_batch_size % (
            self.slots * mbs
        ) == 0

    def candidates_in(self, lo: int, hi: int) -> list[int]:
        """Allowed micro-batches in ``[lo, hi]``, ascending."""
        hi = self._capped(hi)
        if hi < lo:
            return []
        if self.train_batch_size is not None:
            cands = self.fixed_candidates()
            return cands[bisect.bisect_left(cands, lo) : bisect.bisect_right(cands, hi)]
        d = self.divisible_by
        first = max(d, -(-lo // d) * d)
        return list(range(first, hi + 1, d))

    def count_in(self, lo: int, hi: int) -> int:
        """How many allowed micro-batches lie in ``[lo, hi]`` (O(1) when the batch is free)."""
        hi = self._capped(hi)
        if hi < lo:
            return 0
        if self.train_batch_size is not None:
            return len(self.candidates_in(lo, hi))
        d = self.divisible_by
        first = max(d, -(-lo // d) * d)
        return 0 if first > hi else (hi - first) // d + 1

    def nth_in(self, lo: int, hi: int, index: int) -> int:
        """The ``index``-th allowed micro-batch in ``[lo, hi]`` (0-based, ascending)."""
        if self.train_batch_size is not None:
            return self.candidates_in(lo, hi)[index]
        if index >= self.count_in(lo, hi):
            raise IndexError(f"no micro-batch {index} in [{lo}, {hi}]")
        d = self.divisible_by
        first = max(d, -(-lo // d) * d)
        return first + index * d

    def snap_down(self, mbs: int) -> int | None:
        """The largest allowed micro-batch not above ``mbs``, or None."""
        if self.train_batch_size is not None:
            cands = self.fixed_candidates()
            i = bisect.bisect_right(cands, mbs)
            return cands[i - 1] if i else None
        mbs = self._capped(mbs)
        snapped = (mbs // self.divisible_by) * self.divisible_by
        return snapped if snapped >= 1 else None

    def next_above(self, mbs: int) -> int | None:
        """The smallest allowed micro-batch above ``mbs``, or None."""
        if self.train_batch_size is not None:
            cands = self.fixed_candidates()
            i = bisect.bisect_right(cands, mbs)
            return cands[i] if i < len(cands) else None
        d = self.divisible_by
        following = (mbs // d + 1) * d
        return None if self.mbs_cap is not None and following > self.mbs_cap else following

    def _capped(self, mbs: int) -> int:
        return mbs if self.mbs_cap is None else min(mbs, self.mbs_cap)

    def batch_config(self, mbs: int) -> BatchConfig:
        """The consistent batch settings for a micro-batch on this grid."""
        if self.train_batch_size is None:
            gas = self.default_gas
            return BatchConfig(mbs * gas * self.slots, mbs, gas)
        gas = self.train_batch_size // (mbs * self.slots)
        return BatchConfig(self.train_batch_size, mbs, gas)


def get_batch_config_from_mbs_gas_and_slots(
    ds_config: Mapping[str, Any], slots: int
) -> dict[str, int]:
    """Consistent batch settings for a ds_config's micro-batch and accumulation on ``slots``.

    Mirrors ``determined.pytorch.dsat.get_batch_config_from_mbs_gas_and_slots``:
    ``train_batch_size`` is recomputed as mbs x gas x slots.
    """
    mbs = ds_config.get("train_micro_batch_size_per_gpu")
    if isinstance(mbs, bool) or not isinstance(mbs, int) or mbs < 1:
        raise ConfigError(f"train_micro_batch_size_per_gpu must be a positive integer, got {mbs!r}")
    gas = configured_gas(ds_config)
    return BatchConfig(mbs * gas * slots, mbs, gas).to_overwrites()
