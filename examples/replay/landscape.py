"""A replay function: a synthetic 2.7B-parameter model on 4 x 40 GiB GPUs.

``measure(ds_config)`` returns DeepSpeed-style metrics for a full ds_config, or
raises ``MemoryError`` when that config would run out of memory.
"""

from typing import Any

import attrs

from determined_dsat.testing.synthetic import GIB, Landscape

MODEL = attrs.evolve(
    Landscape.draw(11),
    num_params=2_700_000_000,
    slots=4,
    gpu_mem=40 * GIB,
    activation_per_sample=600_000_000,
)


def measure(ds_config: dict[str, Any]) -> dict[str, Any]:
    return MODEL(ds_config)
