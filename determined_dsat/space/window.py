"""How many training steps a trial measures: DeepSpeed's profiling window.

DeepSpeed's autotuning hooks time the steps from ``start_profile_step`` to
``end_profile_step`` (both included) and exit after the last one, so a trial runs
``end + 1`` steps: ``start`` of them warm up unmeasured. One warm-up step is enough (the
first step allocates the optimizer state; ``benchmarks/profile_window.py`` measured the
later ones at steady speed), so an automatic window starts at step 1 and only its length
is chosen.

A measurement's noise has a part that more steps average away (step-to-step jitter) and
a part they do not (where the process landed: memory layout, cores, the neighbours).
With one step's jitter as large as the second part, the window that minimises variance
times trial seconds, ``(1 + 1/m) * (startup + (1 + m) * step)``, is
``m = sqrt(1 + startup / step)`` steps: long steps against the startup get a short window (2
steps at least), cheap steps a long one (at most :data:`MAX_MEASURED_STEPS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs

AUTO_WARMUP_STEPS = 1
MIN_MEASURED_STEPS = 2
MAX_MEASURED_STEPS = 5
"""With one warm-up step, a trial runs at most 6 steps: no more than upstream's default
window (3-5), so scripts and `--max_steps` that suit upstream suit every window."""
UNTIMED_MEASURED_STEPS = 3
"""An automatic window's length before any trial has said how long a step takes."""


@attrs.frozen
class ProfileWindow:
    """The measured steps ``start..end`` (both included) of a trial."""

    start: int
    end: int

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"profile window {self.start}-{self.end}: want 0 <= start <= end")

    @property
    def measured_steps(self) -> int:
        return self.end - self.start + 1

    @property
    def steps_run(self) -> int:
        """Steps a trial runs before DeepSpeed exits after the window."""
        return self.end + 1

    def to_json(self) -> list[int]:
        return [self.start, self.end]

    @classmethod
    def from_json(cls, value: Sequence[Any]) -> ProfileWindow:
        start, end = value
        return cls(int(start), int(end))


def measured_steps_for(startup_s: float, step_s: float) -> int:
    """The window length for a trial whose startup and step take these seconds."""
    if not (math.isfinite(startup_s) and math.isfinite(step_s)) or step_s <= 0:
        return UNTIMED_MEASURED_STEPS
    best = math.sqrt(1.0 + max(0.0, startup_s) / step_s)
    return int(min(MAX_MEASURED_STEPS, max(MIN_MEASURED_STEPS, round(best))))


def auto_window(startup_s: float | None, step_s: float | None) -> ProfileWindow:
    """The automatic window (None: not known yet)."""
    if startup_s is None or step_s is None:
        steps = UNTIMED_MEASURED_STEPS
    else:
        steps = measured_steps_for(startup_s, step_s)
    return ProfileWindow(AUTO_WARMUP_STEPS, AUTO_WARMUP_STEPS + steps - 1)
