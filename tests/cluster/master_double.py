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
Simulated trials never call the trial-side searcher API
(``/api/v1/trials/{id}/searcher/operation``); that route is not served.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import datetime
import http
import json
import pathlib
import re
import socket
import tarfile
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from http import server as http_server
from types import TracebackType
from typing import Any, Literal, Union

import determined as det
import pytest
import yaml
from determined.common import api, constants
from determined.experimental import client

USERNAME = "determined"
"""The one user the double knows."""
USER_TOKEN = "master-double-user-token"
"""Token returned by ``/api/v1/auth/login`` and given to tasks as ``DET_USER_TOKEN``."""
CLUSTER_ID = "master-double-cluster"
MASTER_VERSION = "0.37.0"

ACTIVE_STATES = frozenset({"ACTIVE", "QUEUED", "PULLING", "STARTING", "RUNNING"})
"""Experiment states for which ``GetSearcherEvents`` serves the event queue."""
TERMINAL_STATES = frozenset({"COMPLETED", "CANCELED", "ERROR", "DELETED"})
_STOPPING_TO_TERMINAL = {
    "STOPPING_COMPLETED": "COMPLETED",
    "STOPPING_CANCELED": "CANCELED",
    "STOPPING_KILLED": "CANCELED",
    "STOPPING_ERROR": "ERROR",
}
_EVENT_KINDS = (
    "initialOperations",
    "trialCreated",
    "trialClosed",
    "trialExitedEarly",
    "trialProgress",
    "validationCompleted",
    "experimentInactive",
)
_EXITED_REASONS = {
    "ERRORED": "EXITED_REASON_UNSPECIFIED",
    "INVALID_HP": "EXITED_REASON_INVALID_HP",
    "USER_CANCELED": "EXITED_REASON_USER_REQUESTED_STOP",
}
"""Exit reasons as the master puts them on the wire (``model.ExitedReason`` to proto)."""
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 500: 13, 503: 14}


# --- What a simulated trial yields -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Errored:
    """The trial crashes: ``trialExitedEarly`` (ERRORED) then ``trialClosed``."""

    message: str = "simulated trial error"


@dataclasses.dataclass(frozen=True)
class InvalidHP:
    """The trial raises ``det.InvalidHP``: ``trialExitedEarly`` (INVALID_HP), ``trialClosed``."""

    message: str = "simulated invalid hyperparameters"


@dataclasses.dataclass(frozen=True)
class UserCanceled:
    """The user stops the trial: ``trialExitedEarly`` (USER_CANCELED) then ``trialClosed``."""

    message: str = "simulated user cancel"


@dataclasses.dataclass(frozen=True)
class Delayed:
    """``result``, but only after ``polls`` ``GetSearcherEvents`` calls (others take 1)."""

    result: TrialResult
    polls: int


_EXITS: dict[type, tuple[str, str]] = {
    Errored: ("ERRORED", "ERROR"),
    InvalidHP: ("INVALID_HP", "COMPLETED"),
    UserCanceled: ("USER_CANCELED", "CANCELED"),
}
"""Early exits: (searcher exit reason, final trial state)."""

TrialResult = Union[Mapping[str, Any], float, int, Errored, InvalidHP, UserCanceled, Delayed]
"""What ``simulate`` returns for one ``ValidateAfter``: a metric (any JSON value, usually a
dict of validation metrics, reported as ``validationCompleted.metric``) or an exit."""
Simulator = Callable[[dict[str, Any], int], TrialResult]
"""``simulate(hparams, length) -> TrialResult``; called, under the double's lock, when a
``ValidateAfter`` is applied. It must not call the double over HTTP."""


def _default_simulate(hparams: dict[str, Any], length: int) -> TrialResult:
    return {"validation_metric": float(length)}


# --- Records for assertions ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RouteHit:
    """One HTTP request the double received."""

    method: str
    path: str
    query: str
    status: int | None
    """HTTP status sent back; None when the connection was dropped by a fault."""
    route: str | None
    """Name of the route that served it (None: unknown route, answered 404)."""
    auth: Literal["user", "task"] | None
    """Which kind of token authenticated it, if any."""
    fault: str | None = None
    """``"error"`` or ``"drop"`` when an injected fault shaped the response."""


@dataclasses.dataclass
class PostedOperations:
    """One ``PostSearcherOperations`` call that reached the searcher."""

    event_id: int
    """``triggeredByEvent.id``."""
    operations: list[dict[str, Any]]
    """The ``searcherOperations`` as JSON, in order."""
    accepted: bool
    """False when the master refused it (event not in the queue, experiment gone)."""
    applied: bool = False
    """Whether the operations were applied: an accepted post to a stopping experiment
    acknowledges its event but applies nothing, as on the master."""
    error: str | None = None


@dataclasses.dataclass
class TrialRecord:
    """A simulated trial of a custom experiment (or the search runner's own trial)."""

    trial_id: int
    experiment_id: int
    request_id: str
    hparams: dict[str, Any]
    task_id: str
    allocation_id: str
    state: str = "ACTIVE"
    """ACTIVE, then COMPLETED, ERROR or CANCELED."""
    pending_length: int | None = None
    """Length of the ``ValidateAfter`` being trained toward, if any."""
    pending_result: TrialResult | None = None
    polls_left: int = 0
    validations: list[tuple[int, Any]] = dataclasses.field(default_factory=list)
    """(length, metric) of each completed ``ValidateAfter``."""
    close_requested: bool = False
    exited_reason: str | None = None
    """ERRORED, INVALID_HP or USER_CANCELED after an early exit."""
    exit_message: str | None = None

    @property
    def completed_lengths(self) -> list[int]:
        """Lengths of the completed ``ValidateAfter`` operations, in order."""
        return [length for length, _ in self.validations]


@dataclasses.dataclass
class ExperimentRecord:
    """Everything the double knows about one experiment (snapshots are deep copies)."""

    id: int
    config: dict[str, Any]
    """The submitted config, parsed from its YAML text."""
    config_text: str
    model_files: dict[str, bytes]
    """Model definition files (path -> content); directories are left out."""
    project_id: int
    state: str
    """ACTIVE, PAUSED, STOPPING_*, COMPLETED, CANCELED or ERROR (proto names without STATE_)."""
    start_time: str
    custom: bool
    """Whether ``searcher.name`` is ``custom`` (only those have a searcher event queue)."""
    progress: float | None = None
    """Last ``SetSearcherProgress`` value."""
    events_emitted: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Every event ever queued, as JSON, in order (``experimentInactive`` is not queued)."""
    queue: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Events not acknowledged yet."""
    deliveries: list[list[int]] = dataclasses.field(default_factory=list)
    """Event ids returned by each ``GetSearcherEvents`` call (-1: ``experimentInactive``)."""
    operations: list[PostedOperations] = dataclasses.field(default_factory=list)
    create_request_ids: list[str] = dataclasses.field(default_factory=list)
    """Request id of every ``Create`` operation applied or ignored, duplicates included."""
    trials: dict[str, TrialRecord] = dataclasses.field(default_factory=dict)
    """By request id, in creation order."""
    anomalies: list[str] = dataclasses.field(default_factory=list)
    """Operations the master would log and ignore or refuse; empty in a clean run."""
    stopping_polls_left: int = 0
    event_count: int = 0

    @property
    def model_definition(self) -> list[str]:
        """Sorted names of the model definition files."""
        return sorted(self.model_files)

    def event_ids(self) -> list[int]:
        """Ids of ``events_emitted``, in order."""
        return [int(event["id"]) for event in self.events_emitted]

    def event_kinds(self) -> list[str]:
        """Kinds (``trialCreated``, ...) of ``events_emitted``, in order."""
        return [event_kind(event) for event in self.events_emitted]

    def duplicate_creates(self) -> list[str]:
        """Request ids that were the subject of more than one ``Create``."""
        seen: set[str] = set()
        duplicates: list[str] = []
        for request_id in self.create_request_ids:
            if request_id in seen and request_id not in duplicates:
                duplicates.append(request_id)
            seen.add(request_id)
        return duplicates

    def operation_kinds(self) -> list[str]:
        """Kinds of every operation of every applied post, in order."""
        return [
            operation_kind(op) for post in self.operations if post.applied for op in post.operations
        ]


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint reported with ``ReportCheckpoint`` (``POST /api/v1/checkpoints``)."""

    uuid: str
    task_id: str | None
    allocation_id: str | None
    metadata: dict[str, Any]
    body: dict[str, Any]
    """The ``v1Checkpoint`` JSON as received."""


@dataclasses.dataclass(frozen=True)
class RunnerTask:
    """The search runner's own trial (the on-cluster task that runs ``RemoteSearchRunner``)."""

    experiment_id: int
    trial_id: int
    task_id: str
    allocation_id: str
    session_token: str
    config: dict[str, Any]


@dataclasses.dataclass
class FaultRule:
    """Shape the ``nth`` (1-based) request matching ``method`` and ``path_pattern``.

    ``action="error"`` answers ``status`` with a gRPC-gateway style error body;
    ``action="drop"`` closes the connection without any answer (the client sees a
    connection error). With ``after_apply=False`` the route never runs; with
    ``after_apply=True`` it runs (the master did the work) and only the answer is lost.
    """

    method: str
    path_pattern: str
    nth: int = 1
    action: Literal["error", "drop"] = "error"
    after_apply: bool = False
    status: int = 500
    message: str = "injected fault"
    seen: int = 0
    fired: bool = False


def event_kind(event: Mapping[str, Any]) -> str:
    """The kind of a searcher event JSON, e.g. ``"validationCompleted"``."""
    for kind in _EVENT_KINDS:
        if event.get(kind) is not None:
            return kind
    raise ValueError(f"not a searcher event: {event!r}")


def operation_kind(op: Mapping[str, Any]) -> str:
    """The kind of a searcher operation JSON: Create, ValidateAfter, Close, Progress, Shutdown."""
    if op.get("createTrial") is not None:
        return "Create"
    if (op.get("trialOperation") or {}).get("validateAfter") is not None:
        return "ValidateAfter"
    if op.get("closeTrial") is not None:
        return "Close"
    if op.get("setSearcherProgress") is not None:
        return "Progress"
    if op.get("shutDown") is not None:
        return "Shutdown"
    return "unknown"


# --- HTTP plumbing ---------------------------------------------------------------------------


class _HttpError(Exception):
    """An error answer, with the body shape of Determined's gRPC gateway."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    params: dict[str, str]
    body: Any
    auth: Literal["user", "task"] | None


_Handler = Callable[["MasterDouble", _Request], Any]


@dataclasses.dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    name: str
    handler: _Handler
    authenticated: bool = True


def _error_body(status: int, message: str) -> dict[str, Any]:
    code = _GRPC_CODES.get(status, 2)
    return {
        "code": code,
        "message": message,
        "error": {"code": code, "reason": http.HTTPStatus(status).phrase, "error": message},
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


class _HTTPServer(http_server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, double: MasterDouble) -> None:
        super().__init__(("127.0.0.1", 0), _RequestHandler)
        self.double = double


class _RequestHandler(http_server.BaseHTTPRequestHandler):
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log; hits are recorded in the double."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        outcome = self.server.double._dispatch(self.command, self.path, dict(self.headers), raw)
        if outcome is None:
            self._drop()
            return
        status, body = outcome
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


# --- The double ------------------------------------------------------------------------------


class MasterDouble:
    """A threaded HTTP double of the Determined 0.37 master on ``127.0.0.1`` (a free port).

    Args:
        simulate: what each ``ValidateAfter`` of a custom experiment's trial yields
            (default: ``{"validation_metric": length}``).
        long_poll_s: how long ``GetSearcherEvents`` waits for an event when the queue is
            empty before answering an empty list (the real master: 60 s).
        report_progress: queue a ``trialProgress`` event (``partialUnits`` = length) just
            before each ``validationCompleted``, as a trial reporting its progress would.
        stopping_polls: after a ``Shutdown`` (or cancel/kill) while trials still run, how
            many ``GetSearcherEvents``/``GetExperiment`` calls see the ``STOPPING_*`` state
            before the experiment becomes terminal. With no trial running the experiment
            becomes terminal at once, as on the master.
        password: if set, ``/api/v1/auth/login`` checks it; otherwise any password works.
        config_validator: called with each submitted experiment config; a non-empty list
            of problems refuses the submission with HTTP 400, as the master does for an
            invalid config (e.g. ``expconf.default_validator().sanity_errors``).
    """

    def __init__(
        self,
        simulate: Simulator | None = None,
        *,
        long_poll_s: float = 0.05,
        report_progress: bool = False,
        stopping_polls: int = 1,
        password: str | None = None,
        config_validator: Callable[[dict[str, Any]], Sequence[str]] | None = None,
    ) -> None:
        self._simulate = simulate or _default_simulate
        self._long_poll_s = long_poll_s
        self._report_progress = report_progress
        self._stopping_polls = stopping_polls
        self._password = password
        self._config_validator = config_validator
        self._cond = threading.Condition()
        self._closing = False
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._experiments: dict[int, ExperimentRecord] = {}
        self._trials_by_id: dict[int, TrialRecord] = {}
        self._task_tokens: dict[str, RunnerTask] = {}
        self._checkpoints: list[CheckpointRecord] = []
        self._hits: list[RouteHit] = []
        self._faults: list[FaultRule] = []
        self._preempted: set[str] = set()
        self._trial_reports: list[tuple[int, str, Any]] = []
        self._next_trial_id = 1
        self._logins = 0

    # -- lifecycle --

    def start(self) -> MasterDouble:
        """Bind a free port on 127.0.0.1 and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("the master double is already running")
        self._closing = False
        self._server = _HTTPServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="master-double",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release long polls, stop serving and close the socket."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MasterDouble:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (canonical, as ``api.canonicalize_master_url`` makes it)."""
        if self._server is None:
            raise RuntimeError("the master double is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- introspection (all return copies) --

    def routes_hit(self) -> list[RouteHit]:
        """Every request received, in order."""
        with self._cond:
            return list(self._hits)

    def unknown_routes(self) -> list[RouteHit]:
        """Requests to routes the double does not serve (each answered 404)."""
        with self._cond:
            return [hit for hit in self._hits if hit.route is None]

    def experiments(self) -> list[ExperimentRecord]:
        """Snapshots of all experiments, by id."""
        with self._cond:
            return [copy.deepcopy(exp) for _, exp in sorted(self._experiments.items())]

    def experiment(self, experiment_id: int) -> ExperimentRecord:
        """Snapshot of one experiment."""
        with self._cond:
            return copy.deepcopy(self._experiments[experiment_id])

    def checkpoints(self, task_id: str | None = None) -> list[CheckpointRecord]:
        """Reported checkpoints in report order, optionally only those of one task."""
        with self._cond:
            return [c for c in self._checkpoints if task_id is None or c.task_id == task_id]

    def latest_checkpoint(self, task_id: str) -> str | None:
        """The uuid a restarted task would get as ``DET_LATEST_CHECKPOINT``."""
        reported = self.checkpoints(task_id)
        return reported[-1].uuid if reported else None

    def trial_reports(self) -> list[tuple[int, str, Any]]:
        """(trial id, kind, body) of trial-side reports: progress, metrics, runner/metadata..."""
        with self._cond:
            return list(self._trial_reports)

    @property
    def logins(self) -> int:
        """How many ``/api/v1/auth/login`` calls succeeded."""
        with self._cond:
            return self._logins

    # -- control and failure hooks --

    def inject_fault(
        self,
        method: str,
        path_pattern: str,
        *,
        nth: int = 1,
        action: Literal["error", "drop"] = "error",
        after_apply: bool = False,
        status: int = 500,
        message: str = "injected fault",
    ) -> FaultRule:
        """Make the ``nth`` matching request fail once; see ``FaultRule``.

        ``path_pattern`` is a regular expression matched (``re.fullmatch``) against the
        request path without its query string.
        """
        rule = FaultRule(method.upper(), path_pattern, nth, action, after_apply, status, message)
        with self._cond:
            self._faults.append(rule)
        return rule

    def fail_post_operations(
        self,
        nth: int,
        *,
        action: Literal["error", "drop"] = "error",
        after_apply: bool = False,
    ) -> FaultRule:
        """Fault the ``nth`` ``PostSearcherOperations`` call (of any experiment)."""
        return self.inject_fault(
            "POST",
            r"/api/v1/experiments/\d+/searcher_operations",
            nth=nth,
            action=action,
            after_apply=after_apply,
        )

    def set_preempted(self, allocation_id: str, preempted: bool = True) -> None:
        """Answer ``preempt: true`` (or false again) to that allocation's preemption poll."""
        with self._cond:
            if preempted:
                self._preempted.add(allocation_id)
            else:
                self._preempted.discard(allocation_id)
            self._cond.notify_all()

    def set_experiment_state(self, experiment_id: int, state: str) -> None:
        """Force an experiment's state (e.g. ``PAUSED``), as a user action would."""
        with self._cond:
            self._experiments[experiment_id].state = state
            self._cond.notify_all()

    def register_runner_task(
        self, config: Mapping[str, Any] | None = None, *, experiment_id: int | None = None
    ) -> RunnerTask:
        """Start the search runner's own (non-custom) experiment with one running trial.

        With ``experiment_id``, the trial belongs to that (submitted) experiment, as when
        the master schedules a ``single`` experiment someone created. Otherwise a new
        experiment is made from ``config`` (default: a ``single`` searcher with shared_fs
        checkpoint storage). Its tasks authenticate with the returned ``session_token``.
        """
        with self._cond:
            if experiment_id is not None:
                exp = self._experiments[experiment_id]
                conf = copy.deepcopy(exp.config)
                # The master fills in the cluster's default storage before the task starts.
                conf.setdefault("checkpoint_storage", _runner_config()["checkpoint_storage"])
            else:
                conf = dict(config) if config is not None else _runner_config()
                exp = self._new_experiment(
                    conf, yaml.safe_dump(conf), {}, project_id=1, active=True
                )
            request_id = str(uuid.uuid4())
            trial = self._new_trial(exp, request_id, {})
            token = f"master-double-task-token-{trial.trial_id}"
            task = RunnerTask(
                exp.id, trial.trial_id, trial.task_id, trial.allocation_id, token, conf
            )
            self._task_tokens[token] = task
            return task

    # -- request dispatch --

    def _dispatch(
        self, method: str, raw_path: str, headers: Mapping[str, str], raw: bytes
    ) -> tuple[int, Any] | None:
        """Serve one request; None means: drop the connection without answering."""
        parsed = urllib.parse.urlsplit(raw_path)
        path = parsed.path
        route, params = self._route(method, path)
        with self._cond:
            auth = self._authenticate(headers)
            fault = self._match_fault(method, path)
        fault_name = fault.action if fault is not None else None

        def record(status: int | None) -> None:
            hit = RouteHit(
                method,
                path,
                parsed.query,
                status,
                route.name if route else None,
                auth,
                fault_name,
            )
            with self._cond:
                self._hits.append(hit)

        if fault is not None and not fault.after_apply:
            status = None if fault.action == "drop" else fault.status
            record(status)
            return None if status is None else (status, _error_body(status, fault.message))

        outcome = self._run_route(route, method, path, parsed.query, params, raw, auth)
        if fault is not None:
            status = None if fault.action == "drop" else fault.status
            record(status)
            return None if status is None else (status, _error_body(status, fault.message))
        record(outcome[0])
        return outcome

    def _run_route(
        self,
        route: _Route | None,
        method: str,
        path: str,
        query: str,
        params: dict[str, str],
        raw: bytes,
        auth: Literal["user", "task"] | None,
    ) -> tuple[int, Any]:
        if route is None:
            return 404, _error_body(404, f"no route for {method} {path} in the master double")
        if route.authenticated and auth is None:
            return 401, _error_body(401, "unauthenticated")
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return 400, _error_body(400, "request body is not JSON")
        request = _Request(method, path, urllib.parse.parse_qs(query), params, body, auth)
        try:
            return 200, route.handler(self, request)
        except _HttpError as e:
            return e.status, _error_body(e.status, e.message)

    @staticmethod
    def _route(method: str, path: str) -> tuple[_Route | None, dict[str, str]]:
        for route in _ROUTES:
            if route.method != method:
                continue
            match = route.pattern.fullmatch(path)
            if match:
                return route, {k: urllib.parse.unquote(v) for k, v in match.groupdict().items()}
        return None, {}

    def _authenticate(self, headers: Mapping[str, str]) -> Literal["user", "task"] | None:
        lowered = {k.lower(): v for k, v in headers.items()}
        for header in ("authorization", "grpc-metadata-x-allocation-token"):
            value = lowered.get(header, "")
            token = value[len("Bearer ") :] if value.startswith("Bearer ") else value
            if token == USER_TOKEN:
                return "user"
            if token in self._task_tokens:
                return "task"
        return None

    def _match_fault(self, method: str, path: str) -> FaultRule | None:
        for rule in self._faults:
            if rule.fired or rule.method != method.upper():
                continue
            if re.fullmatch(rule.path_pattern, path):
                rule.seen += 1
                if rule.seen == rule.nth:
                    rule.fired = True
                    return rule
        return None

    # -- model helpers (callers hold the lock) --

    def _experiment_for(self, request: _Request) -> ExperimentRecord:
        experiment_id = int(request.params["id"])
        exp = self._experiments.get(experiment_id)
        if exp is None:
            raise _HttpError(404, f"experiment not found: {experiment_id}")
        return exp

    def _new_experiment(
        self,
        config: dict[str, Any],
        config_text: str,
        files: dict[str, bytes],
        *,
        project_id: int,
        active: bool,
    ) -> ExperimentRecord:
        searcher = config.get("searcher") or {}
        exp = ExperimentRecord(
            id=len(self._experiments) + 1,
            config=config,
            config_text=config_text,
            model_files=files,
            project_id=project_id,
            state="ACTIVE" if active else "PAUSED",
            start_time=_now(),
            custom=isinstance(searcher, dict) and searcher.get("name") == "custom",
        )
        self._experiments[exp.id] = exp
        if exp.custom:
            self._enqueue(exp, "initialOperations", {"placeholder": 0})
        return exp

    def _new_trial(
        self, exp: ExperimentRecord, request_id: str, hparams: dict[str, Any]
    ) -> TrialRecord:
        task_id = f"{exp.id}.{request_id}"
        trial = TrialRecord(
            trial_id=self._next_trial_id,
            experiment_id=exp.id,
            request_id=request_id,
            hparams=hparams,
            task_id=task_id,
            allocation_id=f"{task_id}.1",
        )
        self._next_trial_id += 1
        exp.trials[request_id] = trial
        self._trials_by_id[trial.trial_id] = trial
        return trial

    def _enqueue(self, exp: ExperimentRecord, kind: str, payload: dict[str, Any]) -> None:
        exp.event_count += 1
        event = {"id": exp.event_count, kind: payload}
        exp.events_emitted.append(event)
        exp.queue.append(copy.deepcopy(event))
        self._cond.notify_all()

    def _begin_stop(self, exp: ExperimentRecord, stopping_state: str) -> None:
        if exp.state in TERMINAL_STATES or exp.state in _STOPPING_TO_TERMINAL:
            return
        exp.state = stopping_state
        running = any(trial.state == "ACTIVE" for trial in exp.trials.values())
        if running and self._stopping_polls > 0:
            exp.stopping_polls_left = self._stopping_polls
        else:
            self._finish_stop(exp)
        self._cond.notify_all()

    def _finish_stop(self, exp: ExperimentRecord) -> None:
        terminal = _STOPPING_TO_TERMINAL[exp.state]
        for trial in exp.trials.values():
            if trial.state == "ACTIVE":
                trial.state = terminal
                trial.pending_length = None
                trial.pending_result = None
        exp.state = terminal
        self._cond.notify_all()

    def _observe_stopping(self, exp: ExperimentRecord) -> None:
        """One poll of a stopping experiment: count down, then make it terminal."""
        if exp.state not in _STOPPING_TO_TERMINAL:
            return
        if exp.stopping_polls_left > 0:
            exp.stopping_polls_left -= 1
        else:
            self._finish_stop(exp)

    def _advance(self, exp: ExperimentRecord) -> None:
        """Let simulated time pass: pending ``ValidateAfter``s progress, closed trials exit."""
        for trial in exp.trials.values():
            if trial.state != "ACTIVE":
                continue
            if trial.pending_length is not None:
                trial.polls_left -= 1
                if trial.polls_left > 0:
                    continue
                if not self._complete(exp, trial):
                    continue
            if trial.close_requested and trial.pending_length is None:
                trial.state = "COMPLETED"
                self._enqueue(exp, "trialClosed", {"requestId": trial.request_id})

    def _complete(self, exp: ExperimentRecord, trial: TrialRecord) -> bool:
        """Finish the pending operation; False when the trial (or experiment) is done."""
        length, result = trial.pending_length, trial.pending_result
        assert length is not None
        trial.pending_length, trial.pending_result = None, None
        if isinstance(result, (Errored, InvalidHP, UserCanceled)):
            reason, trial.state = _EXITS[type(result)]
            trial.exited_reason, trial.exit_message = reason, result.message
            payload: dict[str, Any] = {
                "requestId": trial.request_id,
                "exitedReason": _EXITED_REASONS[reason],
            }
            self._enqueue(exp, "trialExitedEarly", payload)
            self._enqueue(exp, "trialClosed", {"requestId": trial.request_id})
            return False
        if length in trial.completed_lengths:
            exp.anomalies.append(
                f"ValidateAfter({trial.request_id}, {length}) completed twice: the master"
                " fails the experiment ('operation ... was already completed')"
            )
            self._begin_stop(exp, "STOPPING_ERROR")
            return False
        if self._report_progress:
            payload = {"requestId": trial.request_id, "partialUnits": float(length)}
            self._enqueue(exp, "trialProgress", payload)
        metric = json.loads(json.dumps(result))
        trial.validations.append((length, metric))
        payload = {
            "requestId": trial.request_id,
            "metric": metric,
            "validateAfterLength": str(length),
        }
        self._enqueue(exp, "validationCompleted", payload)
        return True

    def _apply(self, exp: ExperimentRecord, operations: list[dict[str, Any]]) -> bool:
        """Apply one post's operations; False when the experiment is stopping (ignored)."""
        if exp.state in _STOPPING_TO_TERMINAL:
            return False
        for op in operations:
            kind = operation_kind(op)
            if kind == "Create":
                self._apply_create(exp, op["createTrial"])
            elif kind == "ValidateAfter":
                self._apply_validate_after(exp, op["trialOperation"]["validateAfter"])
            elif kind == "Close":
                trial = self._open_trial(exp, op["closeTrial"].get("requestId"), "Close")
                if trial is not None:
                    trial.close_requested = True
            elif kind == "Progress":
                exp.progress = float(op["setSearcherProgress"].get("progress") or 0.0)
            elif kind == "Shutdown":
                shutdown = op["shutDown"]
                if shutdown.get("failure"):
                    self._begin_stop(exp, "STOPPING_ERROR")
                elif shutdown.get("cancel"):
                    self._begin_stop(exp, "STOPPING_CANCELED")
                else:
                    self._begin_stop(exp, "STOPPING_COMPLETED")
            else:
                exp.anomalies.append(f"unimplemented operation {op!r}")
        return True

    def _apply_create(self, exp: ExperimentRecord, create: dict[str, Any]) -> None:
        request_id = str(create.get("requestId") or "")
        exp.create_request_ids.append(request_id)
        if request_id in exp.trials:
            exp.anomalies.append(f"Create({request_id}): trial already exists; ignored")
            return
        try:
            hparams = json.loads(create.get("hyperparams") or "{}")
        except json.JSONDecodeError:
            exp.anomalies.append(f"Create({request_id}): hyperparams are not JSON; ignored")
            return
        trial = self._new_trial(exp, request_id, hparams)
        if exp.state in _STOPPING_TO_TERMINAL or exp.state in TERMINAL_STATES:
            trial.state = _STOPPING_TO_TERMINAL.get(exp.state, exp.state)
        self._enqueue(exp, "trialCreated", {"requestId": request_id})

    def _apply_validate_after(self, exp: ExperimentRecord, validate: dict[str, Any]) -> None:
        trial = self._open_trial(exp, validate.get("requestId"), "ValidateAfter")
        if trial is None:
            return
        length = int(validate.get("length") or 0)
        try:
            result = self._simulate(copy.deepcopy(trial.hparams), length)
        except Exception as e:  # a broken simulator is a trial error, visible in the record
            result = Errored(f"simulate raised {e!r}")
        polls = 1
        while isinstance(result, Delayed):
            polls = max(polls, result.polls)
            result = result.result
        trial.pending_length, trial.pending_result, trial.polls_left = length, result, polls

    def _open_trial(self, exp: ExperimentRecord, request_id: Any, what: str) -> TrialRecord | None:
        trial = exp.trials.get(str(request_id))
        if trial is None:
            exp.anomalies.append(f"{what}({request_id}): no such trial; ignored")
            return None
        if trial.state != "ACTIVE":
            exp.anomalies.append(f"{what}({request_id}): trial is {trial.state}; ignored")
            return None
        return trial

    # -- route handlers --

    def _h_info(self, request: _Request) -> Any:
        return {
            "version": MASTER_VERSION,
            "master_id": "master-double",
            "cluster_id": CLUSTER_ID,
            "cluster_name": "master-double",
            "telemetry": {"enabled": False},
        }

    def _h_get_master(self, request: _Request) -> Any:
        return {
            "version": MASTER_VERSION,
            "masterId": "master-double",
            "clusterId": CLUSTER_ID,
            "clusterName": "master-double",
            "hasCustomLogo": False,
            "strictJobQueueControl": False,
            "telemetryEnabled": False,
            "rbacEnabled": False,
            "userManagementEnabled": True,
            "featureSwitches": [],
        }

    def _h_login(self, request: _Request) -> Any:
        body = request.body or {}
        if body.get("username") != USERNAME:
            raise _HttpError(403, "user not found")
        if self._password is not None:
            expected = self._password
            if body.get("isHashed"):
                expected = api.salt_and_hash(self._password)
            if body.get("password", "") != expected:
                raise _HttpError(403, "invalid credentials")
        with self._cond:
            self._logins += 1
        return {"token": USER_TOKEN, "user": _user_json()}

    def _h_logout(self, request: _Request) -> Any:
        return {}

    def _h_get_me(self, request: _Request) -> Any:
        return {"user": _user_json()}

    def _h_create_experiment(self, request: _Request) -> Any:
        body = request.body or {}
        config_text = str(body.get("config") or "")
        try:
            config = yaml.safe_load(config_text) or {}
        except yaml.YAMLError as e:
            raise _HttpError(400, f"invalid experiment config YAML: {e}") from e
        if not isinstance(config, dict):
            raise _HttpError(400, "experiment config must be a mapping")
        if self._config_validator is not None:
            problems = list(self._config_validator(config))
            if problems:
                raise _HttpError(400, "invalid experiment: " + "; ".join(problems))
        files = _decode_files(body.get("modelDefinition") or [])
        with self._cond:
            if body.get("validateOnly"):
                preview = ExperimentRecord(
                    0, config, config_text, files, 1, "PAUSED", _now(), custom=False
                )
                return {"experiment": _experiment_json(preview), "config": config}
            exp = self._new_experiment(
                config,
                config_text,
                files,
                project_id=int(body.get("projectId") or 1),
                active=bool(body.get("activate")),
            )
            return {"experiment": _experiment_json(exp), "config": config, "warnings": []}

    def _h_get_experiment(self, request: _Request) -> Any:
        with self._cond:
            exp = self._experiment_for(request)
            self._observe_stopping(exp)
            return {"experiment": _experiment_json(exp), "config": exp.config}

    def _h_experiment_action(self, request: _Request) -> Any:
        action = request.params["action"]
        with self._cond:
            exp = self._experiment_for(request)
            if action == "activate":
                if exp.state == "PAUSED":
                    exp.state = "ACTIVE"
                elif exp.state not in ACTIVE_STATES:
                    raise _HttpError(400, f"experiment in incompatible state STATE_{exp.state}")
            elif action == "pause":
                if exp.state in ACTIVE_STATES:
                    exp.state = "PAUSED"
                elif exp.state != "PAUSED":
                    raise _HttpError(400, f"experiment in incompatible state STATE_{exp.state}")
            elif action == "cancel":
                self._begin_stop(exp, "STOPPING_CANCELED")
            else:
                self._begin_stop(exp, "STOPPING_KILLED")
            self._cond.notify_all()
            return {}

    def _h_get_experiment_trials(self, request: _Request) -> Any:
        with self._cond:
            exp = self._experiment_for(request)
            trials = [_trial_json(t) for t in exp.trials.values()]
        total = len(trials)
        return {
            "trials": trials,
            "pagination": {
                "offset": 0,
                "limit": 0,
                "startIndex": 0,
                "endIndex": total,
                "total": total,
            },
        }

    def _h_get_searcher_events(self, request: _Request) -> Any:
        with self._cond:
            exp = self._experiment_for(request)
            if not exp.custom:
                raise _HttpError(500, _not_custom(exp, "GetCustomSearcherEventQueue"))
            if exp.state in ACTIVE_STATES:
                self._advance(exp)
            if exp.state not in ACTIVE_STATES:
                self._observe_stopping(exp)
                inactive = {
                    "id": -1,
                    "experimentInactive": {"experimentState": f"STATE_{exp.state}"},
                }
                exp.deliveries.append([-1])
                return {"searcherEvents": [inactive]}
            self._cond.wait_for(lambda: self._closing or bool(exp.queue), self._long_poll_s)
            events = copy.deepcopy(exp.queue)
            exp.deliveries.append([int(event["id"]) for event in events])
            return {"searcherEvents": events}

    def _h_post_searcher_operations(self, request: _Request) -> Any:
        body = request.body or {}
        with self._cond:
            exp = self._experiment_for(request)
            if not exp.custom:
                raise _HttpError(500, _not_custom(exp, "GetCustomSearcherEventQueue"))
            event = body.get("triggeredByEvent")
            operations = list(body.get("searcherOperations") or [])
            if not isinstance(event, dict) or event.get("id") is None:
                exp.anomalies.append("operations posted without triggeredByEvent.id")
                raise _HttpError(400, "triggeredByEvent.id is required")
            event_id = int(event["id"])
            post = PostedOperations(event_id, operations, accepted=False)
            exp.operations.append(post)
            if exp.state in TERMINAL_STATES:
                post.error = f"failed to post operations: experiment {exp.id} could not be found"
                exp.anomalies.append(f"operations posted after the experiment became {exp.state}")
                raise _HttpError(500, post.error)
            position = next(
                (i for i, queued in enumerate(exp.queue) if queued["id"] == event_id), None
            )
            if position is None:
                post.error = "failed to remove events from queue"
                exp.anomalies.append(
                    f"operations posted for event {event_id}, which is not in the queue"
                )
                raise _HttpError(500, post.error)
            del exp.queue[: position + 1]
            post.accepted = True
            post.applied = self._apply(exp, operations)
            self._cond.notify_all()
            return {}

    def _h_get_trial(self, request: _Request) -> Any:
        with self._cond:
            trial = self._trials_by_id.get(int(request.params["id"]))
            if trial is None:
                raise _HttpError(404, f"trial not found: {request.params['id']}")
            return {"trial": _trial_json(trial)}

    def _h_trial_report(self, request: _Request) -> Any:
        with self._cond:
            trial_id = int(request.params["id"])
            if trial_id not in self._trials_by_id:
                raise _HttpError(404, f"trial not found: {trial_id}")
            self._trial_reports.append((trial_id, request.params["kind"], request.body))
        return {}

    def _h_run_prepare(self, request: _Request) -> Any:
        return {"storageId": 1}

    def _h_report_checkpoint(self, request: _Request) -> Any:
        body = request.body or {}
        if not body.get("uuid"):
            raise _HttpError(400, "checkpoint uuid is required")
        record = CheckpointRecord(
            uuid=str(body["uuid"]),
            task_id=body.get("taskId"),
            allocation_id=body.get("allocationId"),
            metadata=dict(body.get("metadata") or {}),
            body=body,
        )
        with self._cond:
            self._checkpoints.append(record)
        return {}

    def _h_patch_checkpoints(self, request: _Request) -> Any:
        return {}

    def _h_get_checkpoint(self, request: _Request) -> Any:
        uuid_ = request.params["uuid"]
        with self._cond:
            for record in reversed(self._checkpoints):
                if record.uuid == uuid_:
                    return {"checkpoint": record.body}
        raise _HttpError(404, f"checkpoint not found: {uuid_}")

    def _h_preemption_signal(self, request: _Request) -> Any:
        allocation_id = request.params["id"]
        raw = (
            request.query.get("timeout_seconds") or request.query.get("timeoutSeconds") or ["0"]
        )[0]
        timeout = min(float(raw or 0), 60.0)
        with self._cond:
            self._cond.wait_for(lambda: self._closing or allocation_id in self._preempted, timeout)
            return {"preempt": allocation_id in self._preempted}

    def _h_ack_preemption(self, request: _Request) -> Any:
        return {}


def _route(method: str, pattern: str, handler: _Handler, *, authenticated: bool = True) -> _Route:
    name = handler.__name__.removeprefix("_h_")
    return _Route(method, re.compile(pattern), name, handler, authenticated)


_EXP = r"/api/v1/experiments/(?P<id>\d+)"
_ROUTES: tuple[_Route, ...] = (
    _route("GET", r"/info", MasterDouble._h_info, authenticated=False),
    _route("GET", r"/api/v1/master", MasterDouble._h_get_master, authenticated=False),
    _route("POST", r"/api/v1/auth/login", MasterDouble._h_login, authenticated=False),
    _route("POST", r"/api/v1/auth/logout", MasterDouble._h_logout),
    _route("GET", r"/api/v1/me", MasterDouble._h_get_me),
    _route("POST", r"/api/v1/experiments", MasterDouble._h_create_experiment),
    _route("GET", _EXP, MasterDouble._h_get_experiment),
    _route(
        "POST",
        _EXP + r"/(?P<action>activate|pause|cancel|kill)",
        MasterDouble._h_experiment_action,
    ),
    _route("GET", _EXP + r"/trials", MasterDouble._h_get_experiment_trials),
    _route("GET", _EXP + r"/searcher_events", MasterDouble._h_get_searcher_events),
    _route("POST", _EXP + r"/searcher_operations", MasterDouble._h_post_searcher_operations),
    _route("GET", r"/api/v1/trials/(?P<id>\d+)", MasterDouble._h_get_trial),
    _route(
        "POST",
        r"/api/v1/trials/(?P<id>\d+)/(?P<kind>progress|metrics|runner/metadata|early_exit)",
        MasterDouble._h_trial_report,
    ),
    _route("POST", r"/api/v1/runs/start", MasterDouble._h_run_prepare),
    _route("POST", r"/api/v1/checkpoints", MasterDouble._h_report_checkpoint),
    _route("PATCH", r"/api/v1/checkpoints", MasterDouble._h_patch_checkpoints),
    _route("GET", r"/api/v1/checkpoints/(?P<uuid>[^/]+)", MasterDouble._h_get_checkpoint),
    _route(
        "GET",
        r"/api/v1/allocations/(?P<id>[^/]+)/signals/preemption",
        MasterDouble._h_preemption_signal,
    ),
    _route(
        "POST",
        r"/api/v1/allocations/(?P<id>[^/]+)/signals/ack_preemption",
        MasterDouble._h_ack_preemption,
    ),
)
"""Every route the double serves; anything else is answered 404 and recorded."""


def served_routes() -> list[tuple[str, str]]:
    """(method, path pattern) of every route the double serves."""
    return [(route.method, route.pattern.pattern) for route in _ROUTES]


# --- JSON shapes -------------------------------------------------------------------------------


def _not_custom(exp: ExperimentRecord, what: str) -> str:
    name = str((exp.config.get("searcher") or {}).get("name", ""))
    return f"*searcher.{name}Search search method does not support {what}"


def _user_json() -> dict[str, Any]:
    return {"id": 1, "username": USERNAME, "admin": True, "active": True, "displayName": ""}


def _experiment_json(exp: ExperimentRecord) -> dict[str, Any]:
    searcher = exp.config.get("searcher") or {}
    return {
        "id": exp.id,
        "name": str(exp.config.get("name") or f"Experiment {exp.id}"),
        "description": exp.config.get("description"),
        "labels": exp.config.get("labels"),
        "archived": False,
        "config": exp.config,
        "originalConfig": exp.config_text,
        "jobId": f"master-double-job-{exp.id}",
        "numTrials": len(exp.trials),
        "trialIds": [trial.trial_id for trial in exp.trials.values()],
        "projectId": exp.project_id,
        "projectOwnerId": 1,
        "projectName": "Uncategorized",
        "workspaceId": 1,
        "workspaceName": "Uncategorized",
        "searcherType": str(searcher.get("name", "")),
        "searcherMetric": searcher.get("metric"),
        "startTime": exp.start_time,
        "state": f"STATE_{exp.state}",
        "username": USERNAME,
        "userId": 1,
        "progress": exp.progress,
        "resourcePool": "default",
    }


def _trial_json(trial: TrialRecord) -> dict[str, Any]:
    return {
        "id": trial.trial_id,
        "experimentId": trial.experiment_id,
        "hparams": trial.hparams,
        "restarts": 0,
        "startTime": _now(),
        "state": f"STATE_{trial.state}",
        "totalBatchesProcessed": max(trial.completed_lengths, default=0),
        "taskId": trial.task_id,
    }


def _decode_files(files: Sequence[Mapping[str, Any]]) -> dict[str, bytes]:
    decoded: dict[str, bytes] = {}
    for entry in files:
        if entry.get("type") == ord(tarfile.DIRTYPE):
            continue
        decoded[str(entry.get("path"))] = base64.b64decode(entry.get("content") or "")
    return decoded


def _runner_config() -> dict[str, Any]:
    return {
        "name": "dsat-search-runner",
        "entrypoint": "python3 -m determined_dsat.runners.cluster",
        "searcher": {"name": "single", "metric": "unused", "max_length": 1},
        "max_restarts": 5,
        "checkpoint_storage": {"type": "shared_fs", "host_path": "/tmp/master-double-host"},
    }


# --- Making the test process look like the runner's task container ------------------------


def cluster_info(
    master: MasterDouble, task: RunnerTask, *, latest_checkpoint: str | None = None
) -> det.ClusterInfo:
    """The ``ClusterInfo`` the master would give the runner's trial container."""
    trial_info = det.TrialInfo(
        trial_id=task.trial_id,
        experiment_id=task.experiment_id,
        trial_seed=0,
        hparams={},
        config=task.config,
        steps_completed=0,
        trial_run_id=1,
        debug=False,
        inter_node_network_interface=None,
    )
    return det.ClusterInfo(
        master_url=master.url,
        cluster_id=CLUSTER_ID,
        agent_id="master-double-agent",
        slot_ids=[],
        task_id=task.task_id,
        allocation_id=task.allocation_id,
        session_token=task.session_token,
        task_type="TRIAL",
        latest_checkpoint=latest_checkpoint,
        trial_info=trial_info,
        rendezvous_info=det.RendezvousInfo(["127.0.0.1"], 0, [0]),
        resources_info=det.ResourcesInfo([]),
    )


def enter_cluster_task(
    monkeypatch: pytest.MonkeyPatch,
    master: MasterDouble,
    task: RunnerTask,
    work_dir: pathlib.Path,
    *,
    latest_checkpoint: str | None = None,
) -> det.ClusterInfo:
    """Make this process look like ``task``'s container (undone by ``monkeypatch``).

    Sets ``DET_MASTER``, ``DET_USER``, ``DET_USER_TOKEN`` and ``DET_SESSION_TOKEN`` as the
    master does, keeps the SDK's token and certificate stores under ``work_dir``, makes
    ``det.get_cluster_info()`` return the task's ``ClusterInfo`` (with
    ``latest_checkpoint``, as after a restart), maps the shared_fs container path to
    ``work_dir / "shared_fs"`` and forgets any ``client`` login. Call it again (with a
    fresh ``latest_checkpoint``) to simulate a restarted container.
    """
    info = cluster_info(master, task, latest_checkpoint=latest_checkpoint)
    shared_fs = work_dir / "shared_fs"
    shared_fs.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("DET_MASTER", master.url)
    monkeypatch.setenv("DET_USER", USERNAME)
    monkeypatch.setenv("DET_USER_TOKEN", USER_TOKEN)
    monkeypatch.setenv("DET_SESSION_TOKEN", task.session_token)
    monkeypatch.setenv("DET_DEBUG_CONFIG_PATH", str(work_dir / "det-config"))
    monkeypatch.delenv("DET_PASS", raising=False)
    monkeypatch.setattr(det._info, "_info", info)
    monkeypatch.setattr(det, "get_cluster_info", lambda: info)
    monkeypatch.setattr(constants, "SHARED_FS_CONTAINER_PATH", str(shared_fs))
    monkeypatch.setattr(client, "_determined", None)
    return info
