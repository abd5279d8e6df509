"""What the master double knows and hands out: constants, trial results, records."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

USERNAME = "determined"
"""The one user the double knows."""
USER_TOKEN = "master-double-user-token"
"""Token returned by ``/api/v1/auth/login`` and given to tasks as ``DET_USER_TOKEN``."""
CLUSTER_ID = "master-double-cluster"
MASTER_VERSION = "0.37.0"

ACTIVE_STATES = frozenset({"ACTIVE", "QUEUED", "PULLING", "STARTING", "RUNNING"})
"""Experiment states for which ``GetSearcherEvents`` serves the event queue."""
TERMINAL_STATES = frozenset({"COMPLETED", "CANCELED", "ERROR", "DELETED"})
STOPPING_TO_TERMINAL = {
    "STOPPING_COMPLETED": "COMPLETED",
    "STOPPING_CANCELED": "CANCELED",
    "STOPPING_KILLED": "CANCELED",
    "STOPPING_ERROR": "ERROR",
}
EVENT_KINDS = (
    "initialOperations",
    "trialCreated",
    "trialClosed",
    "trialExitedEarly",
    "trialProgress",
    "validationCompleted",
    "experimentInactive",
)
EXITED_REASONS = {
    "ERRORED": "EXITED_REASON_UNSPECIFIED",
    "INVALID_HP": "EXITED_REASON_INVALID_HP",
    "USER_CANCELED": "EXITED_REASON_USER_REQUESTED_STOP",
}
"""Exit reasons as the master puts them on the wire (``model.ExitedReason`` to proto)."""
GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 500: 13, 503: 14}


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
class Live:
    """A real trial process trains this ``ValidateAfter``: the double waits for it to
    complete the operation over HTTP (``POST /api/v1/trials/{id}/searcher/completed_operation``)
    and reports how its process ended with ``MasterDouble.trial_exited``."""


@dataclasses.dataclass(frozen=True)
class Delayed:
    """``result``, but only after ``polls`` ``GetSearcherEvents`` calls (others take 1)."""

    result: TrialResult
    polls: int


EXITS: dict[type, tuple[str, str]] = {
    Errored: ("ERRORED", "ERROR"),
    InvalidHP: ("INVALID_HP", "COMPLETED"),
    UserCanceled: ("USER_CANCELED", "CANCELED"),
}
"""Early exits: (searcher exit reason, final trial state)."""

TrialResult = Union[Mapping[str, Any], float, int, Errored, InvalidHP, UserCanceled, Delayed, Live]
"""What ``simulate`` returns for one ``ValidateAfter``: a metric (any JSON value, usually a
dict of validation metrics, reported as ``validationCompleted.metric``) or an exit."""
Simulator = Callable[[dict[str, Any], int], TrialResult]
"""``simulate(hparams, length) -> TrialResult``; called, under the double's lock, when a
``ValidateAfter`` is applied. It must not call the double over HTTP."""


def default_simulate(hparams: dict[str, Any], length: int) -> TrialResult:
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
    """A trial of a custom experiment, simulated or live (or the search runner's own trial)."""

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
    live: bool = False
    """Whether a real process runs this trial (its ``ValidateAfter`` yielded ``Live``)."""
    running: bool = False
    """Whether the live trial's container runs (``trial_started`` until ``trial_exited``)."""
    exit_codes: list[int] = dataclasses.field(default_factory=list)
    """Exit code of each container run of the live trial, in order."""
    latest_validation_steps: int | None = None
    """``stepsCompleted`` of the last validation metrics the trial reported."""

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
    """A trial task as its container sees it: the search runner's own trial (the on-cluster
    task that runs ``RemoteSearchRunner``) or a live trial of a custom experiment."""

    experiment_id: int
    trial_id: int
    task_id: str
    allocation_id: str
    session_token: str
    config: dict[str, Any]
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The trial's hyperparameters (``DET_HPARAMS``); empty for the search runner's task."""


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
    for kind in EVENT_KINDS:
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
