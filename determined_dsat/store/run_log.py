"""``dsat.log``: the package's log, in plain language, in the run directory."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from determined_dsat.store.run_dir import RunDirectory


@contextlib.contextmanager
def log_to_run_dir(run_dir: RunDirectory) -> Iterator[None]:
    """Send the package's log to ``dsat.log`` in the run directory for one search."""
    run_dir.path.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir.log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("determined_dsat")
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()
