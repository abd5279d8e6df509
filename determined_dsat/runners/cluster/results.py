"""What the on-cluster search runner keeps in each of its checkpoints, besides state.

``trials.jsonl`` (every finished trial, as in a local run directory), and once a trial
has succeeded ``best_ds_config.json`` (complete, without the autotuning section) and
``best_ds_metrics.json``. Written with every checkpoint, so the newest checkpoint always
holds the best so far, not only the final one.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable

from determined_dsat.store import layout
from determined_dsat.store.lines import trial_line
from determined_dsat.store.run_dir import write_best_pair
from determined_dsat.trials.records import TrialRecord
from determined_dsat.trials.tracker import Tracker

Overwrites = Callable[[TrialRecord], dict[str, object]]


class ResultLog:
    """The finished trials' lines, in completion order, with the time each was first seen."""

    def __init__(self) -> None:
        self.lines: list[dict[str, object]] = []
        self._logged: set[str] = set()

    def catch_up(self, tracker: Tracker, overwrites: Overwrites, now: float | None = None) -> int:
        """Add the trials finished since the last call; returns how many were added."""
        added = 0
        for record in tracker.finished_records():
            rid = record.spec.request_id
            if rid in self._logged:
                continue
            stamp = time.time() if now is None else now
            self.lines.append(trial_line(record, overwrites(record), stamp))
            self._logged.add(rid)
            added += 1
        return added

    def write(self, directory: pathlib.Path) -> None:
        """Write ``trials.jsonl`` into ``directory``."""
        text = "".join(json.dumps(line, sort_keys=True) + "\n" for line in self.lines)
        (directory / layout.TRIALS_FILE).write_text(text)

    @classmethod
    def read(cls, directory: pathlib.Path) -> ResultLog:
        """The log a checkpoint holds (empty when it has none)."""
        log = cls()
        path = directory / layout.TRIALS_FILE
        if path.is_file():
            for raw in path.read_text().splitlines():
                if raw.strip():
                    line = json.loads(raw)
                    log.lines.append(line)
                    log._logged.add(str(line["request_id"]))
        return log


def write_best(
    directory: pathlib.Path, ds_config: dict[str, object], metrics: dict[str, object]
) -> None:
    """Write the best config and its metrics (with the config's hash) into ``directory``."""
    write_best_pair(directory, ds_config, metrics)
