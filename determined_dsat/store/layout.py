"""The one table of file names in a run directory (and in a cluster runner's checkpoint).

Layout of a local or replay run directory::

    .lock                 held by the runner (filelock); holds its pid
    settings.json         the settings the search was started with
    state.json            the search state, for resuming (small: see the journal)
    state-journal.jsonl   finished trial records, append-only, that state.json leaves out
    trials.jsonl          one line per finished trial, in completion order
    best_ds_config.json   the best ds_config found so far
    best_ds_metrics.json  its metrics, with the hash of the config they belong to
    dsat.log              the runner's log
    warmup.log            the DeepSpeed op warm-up's output (local runner)
    trials/<request_id>/  per-trial working folders, created on demand
    report/               ``dsat report`` output

A cluster search runner's checkpoint holds ``trials.jsonl`` and the best pair too, plus
its own state files: the names below, and the search method's own state file
(``methods.search_method.METHOD_STATE_FILE``: the method writes it through Determined's
``SearchMethod.save``).
"""

from __future__ import annotations

LOCK_FILE = ".lock"
SETTINGS_FILE = "settings.json"
STATE_FILE = "state.json"
JOURNAL_FILE = "state-journal.jsonl"
TRIALS_FILE = "trials.jsonl"
BEST_CONFIG_FILE = "best_ds_config.json"
BEST_METRICS_FILE = "best_ds_metrics.json"
LOG_FILE = "dsat.log"
WARMUP_LOG_FILE = "warmup.log"
TRIALS_DIR = "trials"
REPORT_DIR = "report"

# In a cluster search runner's checkpoints (and its upload: the settings).
RUNNER_SETTINGS_FILE = "dsat_settings.json"
SEARCHER_STATE_FILE = "state"  # Determined's own ``SearchMethod.save`` writes it
OPERATIONS_FILE = "operations.json"
FULL_EXPERIMENT_FILE = "full_experiment.json"
