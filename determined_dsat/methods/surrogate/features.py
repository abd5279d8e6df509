"""What the surrogates see of a configuration: every ZeRO block of the space, and their features.

A :class:`BlockTable` enumerates every ``zero_optimization`` block the knob table allows
(stage by stage, knobs in table order) and holds, per block, the numbers both surrogates
need: the model-state bytes of the memory model and the communication-bucket bytes
(memory), and a feature row for the throughput model.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
from numpy.typing import NDArray

from determined_dsat.methods.surrogate.memory import MemoryTerms
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.knobs import (
    NUMERIC_DEFAULTS,
    bucket_elements,
    gathered_elements,
    loose_gradients,
    offload_of,
)
from determined_dsat.space.memory import MemoryModel, Offload

Array = NDArray[np.float64]

STAGE_PRIOR: dict[int, float] = {0: 0.0, 1: -0.02, 2: -0.05, 3: -0.25}
"""Prior mean of log throughput per ZeRO stage, relative to stage 0.

Stages 1 and 2 move the same data per step as plain data parallelism (reduce-scatter plus
all-gather instead of all-reduce; Rajbhandari et al., arXiv:1910.02054, section 7), so
they cost a few percent at most; stage 3 also gathers every layer's weights in the
forward and backward passes (1.5x the traffic), which typically costs tens of percent.
"""


def zero_key(zero: Mapping[str, Any]) -> str:
    """A canonical string for a ZeRO block (the same as ``methods.lineage.zero_key``)."""
    return json.dumps(zero, sort_keys=True)


STAGE_PRIOR_SD = 0.15
ONE_RANK_STAGE_PRIOR_SD: dict[int, float] = {1: 0.05, 2: 0.05}
"""With one rank per trial ZeRO-1 and -2 partition over that rank alone: no collective
has a peer, and only their optimizer's bookkeeping (flat buffers, bucketed copies) can
move throughput, by a few percent. ZeRO-3 keeps :data:`STAGE_PRIOR_SD`: it still
gathers and releases every layer's parameters around each use."""

COMMUNICATION_KNOBS = (
    "reduce_bucket_size",
    "allgather_bucket_size",
    "overlap_comm",
    "reduce_scatter",
    "stage3_prefetch_bucket_size",
)
"""Knobs that only shape collectives: how gradients are reduced and parameters gathered
between ranks, and whether that overlaps with compute."""
ONE_RANK_COMMUNICATION_SCALE = 0.25
"""The prior sd of a communication knob's effect with one rank per trial, as a fraction
of its sd with several: with no peer there is little left for it to change, so the
search should not spend trials on it unless the data say otherwise."""

FLUSH_START = 0.8
"""Predicted memory use (a fraction of usable memory) above which the caching allocator
may start flushing: DeepSpeed warns "pytorch allocator cache flushes since last step",
and a step near the limit costs 5-25 % more."""
FLUSH_PRIOR_SD = 0.2
MBS_KNOTS = (4.0, 16.0, 64.0, 256.0)
MBS_HINGE_PRIOR_SD = 0.1
"""Beyond saturation, throughput may still change with the micro-batch: caches (on CPUs
especially) make it fall past some size, by a roughly constant factor per doubling. The
model has one hinge ``max(0, log(mbs / knot))`` per knot, each with this prior sd on its
power, so a fall can start at any size and nothing changes below the first knot."""


def fill_mbs_features(table: BlockTable, rows: Array, mbs: Array, memory_fraction: Array) -> Array:
    """Set the micro-batch columns of feature ``rows`` (in place; returned): how far the
    predicted memory use is into the flushing zone, and how far log of the micro-batch is
    past each knot."""
    flush = np.maximum(np.asarray(memory_fraction, dtype=float) - FLUSH_START, 0.0)
    rows[:, table.flush_column] = np.minimum(flush / (1.0 - FLUSH_START), 1.5)
    log_mbs = np.log(np.asarray(mbs, dtype=float))
    for column, knot in zip(table.mbs_columns, MBS_KNOTS):
        rows[:, column] = np.maximum(log_mbs - math.log(knot), 0.0)
    return rows


@attrs.frozen
class KnobFeature:
    """How one knob enters the throughput model.

    ``kind`` is ``"log"`` (numeric: log10 value centred on DeepSpeed's default, and its
    square, so the effect can peak inside the range), ``"bool"`` (+-1/2) or ``"flag"``
    (1 when the value is set, e.g. an offload block). ``columns`` are the feature columns
    it owns.
    """

    name: str
    kind: str
    center: float = 0.0
    scale: float = 1.0
    columns: tuple[int, ...] = ()

    def values(self, value: Any) -> tuple[float, ...]:
        if self.kind == "log":
            z = (math.log10(max(float(value), 1.0)) - self.center) / self.scale
            return (z, z * z)
        if self.kind == "bool":
            return (0.5 if bool(value) else -0.5,)
        return (0.0 if value is None else 1.0,)


def _knob_feature(name: str, values: Sequence[Any], first_column: int) -> KnobFeature | None:
    distinct = {json.dumps(v, sort_keys=True) for v in values}
    if len(distinct) < 2:
        return None
    if all(isinstance(v, bool) for v in values):
        return KnobFeature(name, "bool", columns=(first_column,))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        logs = [math.log10(max(float(v), 1.0)) for v in values]
        low, high = min(logs), max(logs)
        # Centred on DeepSpeed's default: the prior expects the least change, with the
        # least uncertainty, there, so untried values are weighed against the setting
        # most models train with, not against the middle of whatever grid was given.
        default = NUMERIC_DEFAULTS.get(name)
        center = (low + high) / 2.0 if default is None else math.log10(default)
        center = min(max(center, low), high)
        scale = max(high - center, center - low, 1e-6)
        return KnobFeature(name, "log", center, scale, (first_column, first_column + 1))
    return KnobFeature(name, "flag", columns=(first_column,))


class BlockTable:
    """Every ZeRO block of a space, with its memory numbers and throughput features;
    with the model's ``num_params``, only the blocks that differ for that model
    (``ConfigSpace.knob_table``).

    Throughput columns: one intercept, one per stage, ``log(gas)``, the knob features
    (shared by every stage whose table has the knob), then the ones that depend on the
    micro-batch: the allocator's flushing and one hinge per :data:`MBS_KNOTS`
    (:func:`fill_mbs_features`; zero in ``block_rows``).
    """

    def __init__(self, space: ConfigSpace, num_params: int | None = None) -> None:
        self.stages = tuple(space.stages)
        self.num_params = num_params
        self.ranks = space.grid.slots
        self.blocks: list[dict[str, Any]] = []
        for stage in self.stages:
            table = space.knob_table(stage, num_params)
            names = list(table)
            for values in itertools.product(*(table[k] for k in names)):
                block: dict[str, Any] = {"stage": stage}
                for name, value in zip(names, values):
                    if value is not None:
                        block[name] = dict(value) if isinstance(value, Mapping) else value
                self.blocks.append(block)
        self.index = {zero_key(b): i for i, b in enumerate(self.blocks)}
        self.stage_of = np.array([b["stage"] for b in self.blocks], dtype=int)
        self.knobs = self._knob_features(space)
        self.stage_column = {s: 1 + i for i, s in enumerate(self.stages)}
        self.gas_column = 1 + len(self.stages)
        knob_end = self.gas_column + 1 + sum(len(k.columns) for k in self.knobs)
        self.flush_column = knob_end
        self.mbs_columns = tuple(knob_end + 1 + i for i in range(len(MBS_KNOTS)))
        self.num_columns = knob_end + 1 + len(MBS_KNOTS)
        self.block_rows = np.array([self._block_row(b) for b in self.blocks])

    def _knob_features(self, space: ConfigSpace) -> list[KnobFeature]:
        values: dict[str, list[Any]] = {}
        for stage in self.stages:
            for name, choices in space.knob_table(stage, self.num_params).items():
                values.setdefault(name, []).extend(choices)
        features: list[KnobFeature] = []
        column = 2 + len(self.stages)
        for name, seen in values.items():
            feature = _knob_feature(name, seen, column)
            if feature is not None:
                features.append(feature)
                column += len(feature.columns)
        return features

    def _block_row(self, block: Mapping[str, Any]) -> Array:
        row = np.zeros(self.num_columns)
        row[0] = 1.0
        row[self.stage_column[int(block["stage"])]] = 1.0
        for knob in self.knobs:
            if knob.name in block or knob.kind == "flag":
                for column, value in zip(knob.columns, knob.values(block.get(knob.name))):
                    row[column] = value
        return row

    def __len__(self) -> int:
        return len(self.blocks)

    def lookup(self, zero: Mapping[str, Any]) -> int | None:
        """The index of a block, or None when it is not in the table."""
        return self.index.get(zero_key(zero))

    def row_of(self, zero: Mapping[str, Any]) -> Array:
        """Throughput features (gas column 0) of any block, in the table or not."""
        i = self.lookup(zero)
        return self.block_rows[i].copy() if i is not None else self._block_row(zero)

    def prior(self) -> tuple[Array, Array]:
        """Prior mean and standard deviation of every throughput coefficient (log scale)."""
        mean = np.zeros(self.num_columns)
        sd = np.zeros(self.num_columns)
        sd[0] = 3.0  # the intercept: set from the data's mean by the throughput model
        for stage, column in self.stage_column.items():
            mean[column] = STAGE_PRIOR.get(stage, 0.0)
            one_rank = ONE_RANK_STAGE_PRIOR_SD.get(stage, STAGE_PRIOR_SD)
            sd[column] = one_rank if self.ranks == 1 else STAGE_PRIOR_SD
        sd[self.gas_column] = 0.05
        sd[self.flush_column] = FLUSH_PRIOR_SD
        sd[list(self.mbs_columns)] = MBS_HINGE_PRIOR_SD
        for knob in self.knobs:
            if knob.kind == "log":
                linear, square = knob.columns
                sd[linear] = 0.04
                mean[square], sd[square] = -0.01, 0.03
            elif knob.kind == "bool":
                sd[knob.columns[0]] = 0.05
            elif "offload" in knob.name:
                # Offloading moves the optimizer step (and maybe weights) over PCIe to the
                # CPU: typically about half the speed (arXiv:2101.06840, figure 7).
                mean[knob.columns[0]], sd[knob.columns[0]] = -0.6, 0.3
            else:
                sd[knob.columns[0]] = 0.1
            if self.ranks == 1 and knob.name in COMMUNICATION_KNOBS:
                for column in knob.columns:
                    mean[column] *= ONE_RANK_COMMUNICATION_SCALE
                    sd[column] *= ONE_RANK_COMMUNICATION_SCALE
        return mean, sd


@attrs.frozen
class BlockMemory:
    """One block's memory terms that do not depend on the micro-batch, in units of usable
    device bytes (see :mod:`surrogate.memory`)."""

    states: float  # model states
    buckets: float  # communication buckets
    loose: float  # 1.0 when its gradients are kept loose (the activations carry a term)
    gathered: float  # ZeRO-3's gathered-parameter bound

    def terms(self, stage: int, activation: float) -> MemoryTerms:
        """The block's terms at ``activation`` (per-sample bytes times mbs, usable units)."""
        return MemoryTerms.at(
            stage, self.states, activation, self.buckets, self.loose, self.gathered
        )


@attrs.frozen
class MemoryBasis:
    """Per-block memory numbers from the memory model, in units of usable device bytes.

    ``states[i]``: model-state bytes of block ``i``; ``activation``: bytes per sample;
    ``buckets[i]``: bucket bytes (elements times the bytes of the training precision);
    ``loose[i]``: 1 where block ``i`` keeps loose gradients; ``gathered[i]``: its ZeRO-3
    gathered-parameter bound.
    """

    usable_bytes: float
    states: Array
    activation: float
    buckets: Array
    loose: Array
    gathered: Array

    @classmethod
    def of(cls, table: BlockTable, memory: MemoryModel, bytes_per_element: int) -> MemoryBasis:
        usable = float(memory.usable_bytes)
        numbers = [memory_numbers(memory, b, bytes_per_element, usable) for b in table.blocks]
        activation = float(max(memory.profile.activation_mem_per_gpu, 1))
        return cls(
            usable_bytes=usable,
            states=np.array([n.states for n in numbers], dtype=float),
            activation=activation / usable,
            buckets=np.array([n.buckets for n in numbers], dtype=float),
            loose=np.array([n.loose for n in numbers], dtype=float),
            gathered=np.array([n.gathered for n in numbers], dtype=float),
        )

    def terms(self, table: BlockTable, blocks: NDArray[np.int64], mbs: NDArray[Any]) -> MemoryTerms:
        """The memory terms of table ``blocks`` at micro-batches ``mbs``."""
        activation = self.activation * np.asarray(mbs, dtype=float)
        return MemoryTerms.at(
            table.stage_of[blocks],
            self.states[blocks],
            activation,
            self.buckets[blocks],
            self.loose[blocks],
            self.gathered[blocks],
        )

    def unit_terms(self, table: BlockTable) -> MemoryTerms:
        """Every block's terms at an activation term of 1 (see ``MemorySurrogate.boundary``)."""
        return MemoryTerms.at(
            table.stage_of, self.states, 1.0, self.buckets, self.loose, self.gathered
        )

    def block_numbers(
        self, memory: MemoryModel, zero: Mapping[str, Any], bytes_per_element: int
    ) -> BlockMemory:
        """The memory terms of any block, in units of usable bytes."""
        return memory_numbers(memory, zero, bytes_per_element, self.usable_bytes)


def memory_numbers(
    memory: MemoryModel, zero: Mapping[str, Any], bytes_per_element: int, usable: float
) -> BlockMemory:
    """A block's memory terms, in units of ``usable`` bytes."""
    stage = int(zero.get("stage", 0))
    o, p = offload_of(zero)
    states = memory.model_state_bytes(stage, Offload(optimizer=o, param=p and stage == 3))
    buckets = bucket_elements(zero) * bytes_per_element
    gathered = gathered_elements(zero, memory.profile.num_params) * bytes_per_element
    return BlockMemory(
        states=states / usable,
        buckets=buckets / usable,
        loose=1.0 if loose_gradients(zero) else 0.0,
        gathered=gathered / usable,
    )
