"""A small HTTP test double of the Determined 0.37 master, for wire-level contract tests.

A real master needs Docker and Postgres; this double answers the REST routes that
Determined's own Python SDK (``determined.common.api.bindings``,
``determined.experimental.client``, ``determined.core`` and ``determined.searcher``)
calls for a *custom searcher* experiment, over real HTTP on ``127.0.0.1``. It runs the
trials of custom experiments itself, without processes: a ``simulate(hparams, length)``
callable says what each ``ValidateAfter`` yields (a metric, an error, invalid
hyperparameters, a user cancel), and time advances only when the search runner polls
``GetSearcherEvents``, so tests are deterministic and fast.

Protocol semantics follow the Determined master (``determined-ai/determined``):

- ``master/pkg/searcher/custom_searcher_events_queue.go``: event ids count up from 1;
  ``GetSearcherEvents`` returns every event not yet acknowledged, long-polling while the
  queue is empty (the master waits up to 60 s, the double ``long_poll_s``) and returning
  an empty list on timeout; ``PostSearcherOperations`` removes the events up to and
  including ``triggeredByEvent.id`` and only then applies the operations. If that id is
  not in the queue the call fails (HTTP 500, "failed to remove events from queue") and
  nothing is applied.
- ``master/pkg/searcher/custom_search.go``: ``initialOperations`` is queued when the
  experiment starts; ``trialCreated`` when a ``Create`` is processed; ``validationCompleted``
  (metric, ``validateAfterLength``) when a trial completes its ``ValidateAfter``;
  ``trialExitedEarly`` then ``trialClosed`` when a trial exits early; ``trialClosed`` when
  a closed trial finishes; ``trialProgress`` when a trial reports progress.
- ``master/pkg/searcher/searcher.go``: for custom searches the master never shuts the
  experiment down by itself (only a ``Shutdown`` op does); a ``ValidateAfter`` completed
  twice is an error that moves the experiment to ``ERROR``.
- ``master/internal/experiment.go``: a ``Create`` for a request id that already exists is
  ignored; operations on unknown trials are ignored (the master logs them: here they are
  listed in ``ExperimentRecord.anomalies``); ``Shutdown`` moves the experiment to
  ``STOPPING_COMPLETED`` / ``STOPPING_CANCELED`` / ``STOPPING_ERROR`` (cancel / failure),
  which becomes ``COMPLETED`` / ``CANCELED`` / ``ERROR`` once no trial runs; operations
  posted while stopping are acknowledged but not applied.
- ``master/internal/api_experiment.go``: while the experiment is not active (any state
  but ACTIVE, QUEUED, PULLING, STARTING, RUNNING: paused, stopping or terminal),
  ``GetSearcherEvents`` answers a single ``experimentInactive`` event with id -1 and the
  experiment's state, without touching the queue.

Sources and assumptions. ``searcher.go`` was read in its post-actor form (mutex, custom
search exemptions, as in 0.27 to 0.37); ``experiment.go`` and ``api_experiment.go`` only in
their actor-era form, whose searcher handling the later refactor kept. Not verifiable
against 0.37 and assumed: a post to an experiment that has ended is refused with HTTP 500
and a message containing "could not be found" (the SDK's ``SearchRunner.post_operations``
swallows exactly that error when the operations hold a ``Close``); ``GetExperiment``
reports ACTIVE where the master would refine it to QUEUED/RUNNING.

Usage::

    with MasterDouble(simulate=lambda hparams, length: {"throughput": 1.0}) as master:
        session = authentication.login(master.url, "determined", "")
        ...  # create an experiment, run a SearchRunner against master.url
        exp = master.experiment(1)
        assert exp.state == "COMPLETED" and not exp.duplicate_creates()

``enter_cluster_task()`` makes the test process look like the search runner's own trial
container (``det.get_cluster_info()``, ``DET_*`` variables, shared_fs checkpoints under a
temporary directory), so ``det.core.init()`` and ``RemoteSearchRunner`` run in-process.

Trials of a custom experiment are simulated, unless ``simulate`` answers ``Live()``: then a
real trial process trains the operation and completes it over the trial-side searcher API
(``live.py``); ``container.run_container()`` boots such a trial the way an agent does.

Modules: ``records`` (what the double knows and hands out), ``state`` (the searcher
protocol above), ``live`` (trial-side semantics), ``experiment_routes`` and
``trial_routes`` (the handlers), ``routes`` (the route table), ``wire`` (HTTP plumbing),
``shapes`` (JSON bodies, trial configs), ``server`` (``MasterDouble``), ``task`` (in-process
cluster tasks) and ``container`` (trial containers in a private mount namespace).
"""

from __future__ import annotations

from .records import (
    ACTIVE_STATES,
    CLUSTER_ID,
    MASTER_VERSION,
    TERMINAL_STATES,
    USER_TOKEN,
    USERNAME,
    CheckpointRecord,
    Delayed,
    Errored,
    ExperimentRecord,
    FaultRule,
    InvalidHP,
    Live,
    PostedOperations,
    RouteHit,
    RunnerTask,
    Simulator,
    TrialRecord,
    TrialResult,
    UserCanceled,
    event_kind,
    operation_kind,
)
from .routes import served_routes
from .server import MasterDouble
from .task import cluster_info, enter_cluster_task

__all__ = [
    "ACTIVE_STATES",
    "CLUSTER_ID",
    "MASTER_VERSION",
    "TERMINAL_STATES",
    "USERNAME",
    "USER_TOKEN",
    "CheckpointRecord",
    "Delayed",
    "Errored",
    "ExperimentRecord",
    "FaultRule",
    "InvalidHP",
    "Live",
    "MasterDouble",
    "PostedOperations",
    "RouteHit",
    "RunnerTask",
    "Simulator",
    "TrialRecord",
    "TrialResult",
    "UserCanceled",
    "cluster_info",
    "enter_cluster_task",
    "event_kind",
    "operation_kind",
    "served_routes",
]
