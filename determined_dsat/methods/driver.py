"""The search driver: a pure ask/tell loop around a search policy.

``start()`` gives the one-step profiling trial; ``tell(request_id, result)`` records how a
trial ended; ``ask()`` gives the trials to start now, from the phases wrapped around the
policy (baseline, search, confirmation: ``phases.py``). Once the search is over,
``ending`` says why and whether it failed. No I/O, no clock, no global random state: the
RNG is seeded, request ids come from the seed and a counter, and ``state_dict()`` restores
a driver that makes the same decisions. Every runner reaches it through the
``SearchMethod`` shim (``search_method.py``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from determined_dsat.methods.base import SearchPolicy
from determined_dsat.methods.confirm import REMEASURE_MIN_GAIN, confirmation_budget
from determined_dsat.methods.phases import (
    PolicySearch,
    RequestIds,
    WithBaseline,
    WithConfirmation,
)
from determined_dsat.space.config_space import ConfigSpace
from determined_dsat.space.memory import ModelProfile
from determined_dsat.trials.records import Outcome, TrialKind, TrialResult, TrialSpec
from determined_dsat.trials.specs import profile_spec
from determined_dsat.trials.tracker import Tracker

logger = logging.getLogger("determined_dsat")

DRIVER_STATE_VERSION = 2
"""2: ``ending`` replaced ``stop_message`` and ``failed`` (version 1, before 0.1.1)."""


@attrs.frozen
class Ending:
    """Why the search stops. ``immediate``: stop now, even with trials running (a trial
    was cancelled or had invalid hyperparameters); ``cancel``: the user cancelled."""

    message: str
    failed: bool
    immediate: bool = False
    cancel: bool = False


class SearchDriver:
    """Runs a policy's search; see the module docstring."""

    def __init__(
        self,
        policy: SearchPolicy,
        space: ConfigSpace,
        tracker: Tracker,
        seed: int,
        baseline: bool = False,
        confirm_top: int = 0,
    ) -> None:
        self.policy = policy
        self.space = space
        self.tracker = tracker
        self.rng = np.random.default_rng(seed)
        self.ids = RequestIds(seed)
        k = confirmation_budget(tracker.limits.max_trials, confirm_top, baseline)
        self._build_phases(baseline, k)
        self.ending: Ending | None = None

    def _build_phases(self, baseline: bool, k: int) -> None:
        search = PolicySearch(self.policy, self.space, self.tracker, self.rng, self.ids)
        # A method that stops for too small a gain re-measures by the same rule.
        min_gain = getattr(self.policy.options, "min_improvement", REMEASURE_MIN_GAIN)
        self.confirmation = WithConfirmation(search, self.tracker, self.ids, k, float(min_gain))
        self.root = WithBaseline(self.confirmation, self.space, self.tracker, self.ids, baseline)

    # ----- ask / tell -----
    def start(self) -> list[TrialSpec]:
        """The profiling trial of a fresh search; nothing for one that has begun."""
        if len(self.tracker):
            return []
        spec = profile_spec(self.space, self.ids.new())
        self.tracker.add(spec)
        return [spec]

    def ask(self, capacity: int | None = None) -> list[TrialSpec]:
        """The trials to start now: at most ``capacity`` (None: as many as the limits allow).

        Returns nothing once the search is ending; it has ended (``ending`` set) when the
        phases are done and nothing runs."""
        if self.ending is not None:
            return []
        limit = self.tracker.limits.max_trials if capacity is None else capacity
        specs = self.root.ask(limit, 0)
        done = self.root.end_reason()
        if not specs and self.tracker.num_running == 0:
            # With nothing running a phase that proposes nothing is done, whatever it says:
            # waiting would wait forever.
            reason = done or "no further trial fits within the limits"
            self.ending = Ending(self._final_message(reason), failed=False)
        return specs

    def tell(self, request_id: str, result: TrialResult) -> None:
        """Record how a trial ended; unknown or already finished trials are ignored."""
        if request_id not in self.tracker or self.tracker[request_id].finished:
            return
        record = self.tracker.finish(request_id, result)
        self.root.tell(record)
        outcome = result.outcome
        if record.spec.kind is TrialKind.PROFILE:
            if outcome is Outcome.OK:
                self._accept_profile(result.metrics)
            else:
                self._fail(_profile_failure(result))
        elif outcome in (Outcome.INVALID, Outcome.CANCELLED) and self.ending is None:
            self.ending = Ending(
                f"a trial ended as {outcome.value}; stopping the search",
                failed=outcome is Outcome.INVALID,
                immediate=True,
                cancel=outcome is Outcome.CANCELLED,
            )

    def abandon(self, request_id: str, detail: str) -> None:
        """Record a trial that was closed before it reported as cancelled, without stopping
        the search (unlike a trial the user cancelled)."""
        if request_id in self.tracker and not self.tracker[request_id].finished:
            record = self.tracker.finish(
                request_id, TrialResult(Outcome.CANCELLED, {}, None, detail)
            )
            self.root.tell(record)

    @property
    def failed(self) -> bool:
        """Whether the search failed (a broken profile, a trial with invalid settings)."""
        return self.ending is not None and self.ending.failed

    def planned_trials(self) -> str | None:
        """The policy's one-line plan, printed before the search."""
        return self.policy.planned_trials()

    def _final_message(self, reason: str) -> str:
        if not self.tracker.winner_confirmed:
            return reason
        n = self.confirmation.remeasured()
        what = "the best configuration was" if n == 1 else f"the top {n} configurations were"
        skipped = self.confirmation.skipped()
        if skipped:
            others = f"the other {skipped} of the top {n + skipped}"
            return f"{reason}; {what} re-measured ({others} trailed the leader beyond the noise)"
        return f"{reason}; {what} re-measured"

    def _fail(self, message: str) -> None:
        if self.ending is None or not self.ending.failed:
            self.ending = Ending(message, failed=True)

    def _accept_profile(self, metrics: Mapping[str, Any]) -> None:
        try:
            profile = ModelProfile.from_metrics(metrics)
        except ValueError as exc:
            self._fail(f"the profiling trial reported unusable model info: {exc}")
            return
        self.tracker.set_profile(profile)
        memory = self.space.memory_model(profile)
        estimates = memory.max_mbs_per_stage(self.space.stages)
        logger.info("memory model: approximate largest micro-batch per ZeRO stage %s", estimates)

    # ----- persistence -----
    def state_dict(self, journaled: int = 0) -> dict[str, Any]:
        """JSON-able state; :meth:`load_state_dict` on a fresh driver continues identically.

        ``journaled``: how many finished records (in completion order) the caller keeps in
        a journal instead (see :meth:`Tracker.to_json`).
        """
        ending = self.ending
        return {
            "version": DRIVER_STATE_VERSION,
            "method": self.policy.name,
            "seed": self.ids.seed,
            "next_seq": self.ids.next_seq,
            "rng": dict(self.rng.bit_generator.state),
            "tracker": self.tracker.to_json(journaled),
            "policy": self.policy.state_dict(),
            "ending": None if ending is None else attrs.asdict(ending),
            **self.root.state_dict(),
        }

    def load_state_dict(
        self, state: Mapping[str, Any], journal: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        """Restore :meth:`state_dict` (``journal``: the records it left out)."""
        version = state.get("version")
        if version != DRIVER_STATE_VERSION:
            raise ValueError(f"unsupported search state version {version!r}")
        if state.get("method") != self.policy.name:
            raise ValueError(
                f"the saved search used method {state.get('method')!r}, not {self.policy.name!r}"
            )
        self.ids.seed = int(state["seed"])
        self.ids.next_seq = int(state["next_seq"])
        self.rng.bit_generator.state = state["rng"]
        self.tracker = Tracker.from_json(state["tracker"], journal)
        self.policy.load_state_dict(state["policy"])
        ending = state.get("ending")
        self.ending = None if ending is None else Ending(**ending)
        self._build_phases(self.root.enabled, self.confirmation.k)
        self.root.load_state_dict(state)


def _profile_failure(result: TrialResult) -> str:
    """Why the profiling trial failed, in words: what its log shows, not a guess."""
    outcome = result.outcome
    if outcome is Outcome.OOM:
        return (
            "the profiling trial ran out of memory at train_micro_batch_size_per_gpu=1 "
            "with your ZeRO settings: the model does not fit as configured (try ZeRO "
            "stage 3 in your ds_config, or --offload)"
        )
    if outcome is Outcome.TIMEOUT:
        return (
            "the profiling trial timed out (see --trial-timeout); its log is in the run directory"
        )
    shown = last_error_line(result.detail)
    return f"the profiling trial failed ({outcome.value}: {shown or 'no error in its log'})"


_RANK_PREFIX = re.compile(r"^\s*\[rank\d+\]:")


def last_error_line(detail: str) -> str:
    """The line of a failure's log that names the error: the last line of its last
    traceback (``ModuleNotFoundError: No module named 'x'``), else its last line."""
    lines = [_RANK_PREFIX.sub("", line).strip() for line in detail.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    after = max((i for i, line in enumerate(lines) if line.startswith("Traceback")), default=-1)
    tail = lines[after + 1 :] if after >= 0 else lines
    errors = [line for line in tail if _names_an_error(line)]
    return (errors[-1] if errors else lines[-1])[:300]


def _names_an_error(line: str) -> bool:
    head = line.split(":", 1)[0]
    return (
        ":" in line
        and head.replace(".", "").isidentifier()
        and (head.endswith(("Error", "Exception", "Interrupt", "Exit")) or "Error" in head)
    )
