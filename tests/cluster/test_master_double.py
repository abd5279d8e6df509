"""The master double (the ``master_double`` package) follows the custom-searcher protocol.

Every test talks to the double over real HTTP with Determined 0.37's own client code:
``determined.common.api.bindings``, ``determined.experimental.client``,
``determined.searcher.SearchRunner`` and, on a simulated cluster task,
``det.core.init()`` with ``determined.searcher.RemoteSearchRunner``. The search method is
a tiny random search (one hyperparameter, 4 trials, at most 2 at a time) that replaces
trials which exit early.
"""

from __future__ import annotations

import pathlib
import pickle
import random
import uuid
from collections.abc import Iterator
from typing import Any

import determined as det
import pytest
from determined import searcher
from determined.common import api
from determined.common.api import authentication, bindings, errors
from determined.experimental import client
from master_double import (
    USER_TOKEN,
    Delayed,
    Errored,
    ExperimentRecord,
    InvalidHP,
    MasterDouble,
    RunnerTask,
    TrialResult,
    UserCanceled,
    enter_cluster_task,
    event_kind,
    operation_kind,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

LENGTH = 8
CUSTOM_CONFIG: dict[str, Any] = {
    "name": "tiny-custom-search",
    "entrypoint": "python3 train.py",
    "searcher": {"name": "custom", "metric": "throughput", "smaller_is_better": False},
    "hyperparameters": {"lr": {"type": "const", "val": 0.01}},
    "max_restarts": 0,
}


class TinyRandomSearch(searcher.SearchMethod):
    """Random ``lr``; ``max_trials`` good trials, ``max_concurrent`` at a time.

    A trial that exits early does not count toward ``max_trials``: it is replaced.
    """

    def __init__(self, max_trials: int = 4, max_concurrent: int = 2, seed: int = 0) -> None:
        super().__init__()
        self.max_trials = max_trials
        self.max_concurrent = max_concurrent
        self.rng = random.Random(seed)
        self.created = 0
        self.closed = 0
        self.metrics: dict[str, Any] = {}
        self.exits: dict[str, searcher.ExitedReason] = {}

    def _create(self) -> list[searcher.Operation]:
        self.created += 1
        hparams = {"index": self.created, "lr": round(self.rng.uniform(1e-4, 1e-1), 6)}
        return [searcher.Create(uuid.uuid4(), hparams, checkpoint=None)]

    def initial_operations(
        self, searcher_state: searcher.SearcherState
    ) -> list[searcher.Operation]:
        ops: list[searcher.Operation] = []
        for _ in range(min(self.max_concurrent, self.max_trials)):
            ops += self._create()
        return ops

    def on_trial_created(
        self, searcher_state: searcher.SearcherState, request_id: uuid.UUID
    ) -> list[searcher.Operation]:
        return [searcher.ValidateAfter(request_id, LENGTH)]

    def on_validation_completed(
        self,
        searcher_state: searcher.SearcherState,
        request_id: uuid.UUID,
        metric: Any,
        train_length: int,
    ) -> list[searcher.Operation]:
        self.metrics[str(request_id)] = metric
        return [searcher.Close(request_id)]

    def on_trial_exited_early(
        self,
        searcher_state: searcher.SearcherState,
        request_id: uuid.UUID,
        exited_reason: searcher.ExitedReason,
    ) -> list[searcher.Operation]:
        self.exits[str(request_id)] = exited_reason
        return []

    def on_trial_closed(
        self, searcher_state: searcher.SearcherState, request_id: uuid.UUID
    ) -> list[searcher.Operation]:
        self.closed += 1
        if self.created - len(self.exits) < self.max_trials:
            return self._create()
        if self.closed == self.created:
            return [searcher.Shutdown()]
        return []

    def progress(self, searcher_state: searcher.SearcherState) -> float:
        return min(1.0, len(self.metrics) / self.max_trials)

    def save_method_state(self, path: pathlib.Path) -> None:
        state = (self.rng.getstate(), self.created, self.closed, self.metrics, self.exits)
        with path.joinpath("tiny_random.pkl").open("wb") as f:
            pickle.dump(state, f)

    def load_method_state(self, path: pathlib.Path) -> None:
        with path.joinpath("tiny_random.pkl").open("rb") as f:
            rng_state, self.created, self.closed, self.metrics, self.exits = pickle.load(f)
        self.rng.setstate(rng_state)


class FailOnFirstExit(TinyRandomSearch):
    """Shuts the search down as failed as soon as a trial exits early."""

    def on_trial_exited_early(
        self,
        searcher_state: searcher.SearcherState,
        request_id: uuid.UUID,
        exited_reason: searcher.ExitedReason,
    ) -> list[searcher.Operation]:
        super().on_trial_exited_early(searcher_state, request_id, exited_reason)
        return [searcher.Shutdown(failure=True)]


def throughput(hparams: dict[str, Any], length: int) -> TrialResult:
    return {"throughput": 1000.0 * float(hparams["lr"]), "length": length}


@pytest.fixture(autouse=True)
def det_home(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """Keep the SDK's token store in tmp_path and start without any login or task env."""
    monkeypatch.setenv("DET_DEBUG_CONFIG_PATH", str(tmp_path / "det-config"))
    for name in ("DET_MASTER", "DET_USER", "DET_USER_TOKEN", "DET_PASS", "DET_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(client, "_determined", None)
    return tmp_path


@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "model"
    path.mkdir()
    (path / "train.py").write_text("print('simulated by the master double')\n")
    return path


def run_search(
    master: MasterDouble, method: searcher.SearchMethod, model_dir: pathlib.Path
) -> tuple[searcher.SearchRunner, client.Determined, int]:
    """Create the custom experiment with the SDK and run ``SearchRunner`` to its end."""
    d = client.Determined(master=master.url, user="determined", password="")
    exp = d.create_experiment(CUSTOM_CONFIG, model_dir)
    runner = searcher.SearchRunner(method)
    runner.state.experiment_id = exp.id
    runner.run_experiment(exp.id, d._session, None, sleep_time=0)
    return runner, d, exp.id


def max_concurrent_trials(record: ExperimentRecord) -> int:
    running: set[str] = set()
    most = 0
    for event in record.events_emitted:
        kind = event_kind(event)
        if kind == "trialCreated":
            running.add(event[kind]["requestId"])
        elif kind == "trialClosed":
            running.discard(event[kind]["requestId"])
        most = max(most, len(running))
    return most


def test_login_info_auth_and_unknown_routes() -> None:
    with MasterDouble(password="Secret-1") as master:
        with pytest.raises(errors.ForbiddenException):
            authentication.login(master.url, "determined", "wrong")
        session = authentication.login(master.url, "determined", "Secret-1")
        assert session.token == USER_TOKEN
        assert bindings.get_GetMe(session).user.username == "determined"
        assert bindings.get_GetMaster(api.UnauthSession(master.url, None)).version == "0.37.0"
        stranger = api.Session(master.url, "determined", "not-a-token", None)
        with pytest.raises(errors.UnauthenticatedException):
            bindings.get_GetMe(stranger)
        with pytest.raises(errors.NotFoundException):
            session.get("/api/v1/models")
        assert [(h.method, h.path, h.status) for h in master.unknown_routes()] == [
            ("GET", "/api/v1/models", 404)
        ]
        assert master.logins == 1


def test_full_search_runs_to_shutdown_and_completes(model_dir: pathlib.Path) -> None:
    method = TinyRandomSearch()
    with MasterDouble(throughput) as master:
        runner, d, exp_id = run_search(master, method, model_dir)
        assert d.get_experiment(exp_id).state == client.ExperimentState.COMPLETED
        record = master.experiment(exp_id)
        unknown = master.unknown_routes()

    assert runner.state.experiment_completed and not runner.state.experiment_failed
    assert record.state == "COMPLETED" and record.progress == 1.0
    assert record.config == CUSTOM_CONFIG and record.model_definition == ["train.py"]
    ids = record.event_ids()
    assert ids == list(range(1, len(ids) + 1))
    assert all(batch == sorted(set(batch)) for batch in record.deliveries)
    assert record.event_kinds()[0] == "initialOperations"
    assert record.event_kinds().count("validationCompleted") == 4
    posted = [post.event_id for post in record.operations]
    assert all(post.accepted for post in record.operations) and posted == sorted(set(posted))
    assert record.operation_kinds()[-2:] == ["Shutdown", "Progress"]
    assert len(record.trials) == 4 and not record.duplicate_creates()
    assert {t.state for t in record.trials.values()} == {"COMPLETED"}
    assert all(t.completed_lengths == [LENGTH] for t in record.trials.values())
    assert method.metrics == {
        rid: {"throughput": 1000.0 * t.hparams["lr"], "length": LENGTH}
        for rid, t in record.trials.items()
    }
    assert max_concurrent_trials(record) == 2
    assert record.anomalies == [] and unknown == []


@pytest.mark.parametrize(
    ("outcome", "reason", "wire_reason"),
    [
        (Errored("CUDA out of memory"), searcher.ExitedReason.ERRORED, "EXITED_REASON_UNSPECIFIED"),
        (InvalidHP(), searcher.ExitedReason.INVALID_HP, "EXITED_REASON_INVALID_HP"),
        (
            UserCanceled(),
            searcher.ExitedReason.USER_CANCELED,
            "EXITED_REASON_USER_REQUESTED_STOP",
        ),
    ],
    ids=["errored", "invalid_hp", "user_canceled"],
)
def test_early_exit_arrives_as_trial_exited_early_and_steers_the_method(
    model_dir: pathlib.Path,
    outcome: TrialResult,
    reason: searcher.ExitedReason,
    wire_reason: str,
) -> None:
    def simulate(hparams: dict[str, Any], length: int) -> TrialResult:
        return outcome if hparams["index"] == 2 else throughput(hparams, length)

    method = TinyRandomSearch()
    with MasterDouble(simulate) as master:
        runner, _, exp_id = run_search(master, method, model_dir)
        record = master.experiment(exp_id)

    bad = next(rid for rid, t in record.trials.items() if t.hparams["index"] == 2)
    kinds = record.event_kinds()
    exit_at = kinds.index("trialExitedEarly")
    exit_event = record.events_emitted[exit_at]["trialExitedEarly"]
    assert exit_event == {"requestId": bad, "exitedReason": wire_reason}
    assert record.events_emitted[exit_at + 1] == {
        "id": exit_at + 2,
        "trialClosed": {"requestId": bad},
    }
    assert method.exits == {bad: reason}
    # The method replaced the trial: 5 created, 4 measured, and the search still completed.
    assert len(record.trials) == 5 and len(method.metrics) == 4 and bad not in method.metrics
    assert record.trials[bad].exited_reason == reason.value
    assert runner.state.failures == ({uuid.UUID(bad)} if reason.value == "ERRORED" else set())
    assert record.state == "COMPLETED" and runner.state.experiment_completed
    assert record.anomalies == [] and not record.duplicate_creates()


def test_shutdown_with_failure_while_a_trial_runs_stops_then_errors(
    model_dir: pathlib.Path,
) -> None:
    """``Shutdown(failure=True)`` with a trial still running: STOPPING_ERROR, then ERROR.

    The runner stops at the first ``experimentInactive`` (here STOPPING_ERROR, so it does
    not record a failure); the post for the ``trialClosed`` that followed the exit in the
    same batch is acknowledged but, the experiment stopping, not applied.
    """

    def simulate(hparams: dict[str, Any], length: int) -> TrialResult:
        if hparams["index"] == 1:
            return Errored()
        return Delayed(throughput(hparams, length), polls=5)

    with MasterDouble(simulate) as master:
        runner, d, exp_id = run_search(master, FailOnFirstExit(), model_dir)
        seen_by_runner = master.experiment(exp_id)
        final_state = d.get_experiment(exp_id).state
        final = master.experiment(exp_id)

    assert seen_by_runner.state == "STOPPING_ERROR"
    assert seen_by_runner.deliveries[-1] == [-1]
    assert not runner.state.experiment_failed and not runner.state.experiment_completed
    last_two = seen_by_runner.operations[-2:]
    assert [(p.accepted, p.applied) for p in last_two] == [(True, True), (True, False)]
    assert final_state == client.ExperimentState.ERROR
    assert {t.state for t in final.trials.values()} == {"ERROR"}
    assert final.anomalies == []


def test_post_after_the_experiment_ended_is_refused(model_dir: pathlib.Path) -> None:
    """With no trial left, ``Shutdown`` ends the experiment at once, as on the master.

    The SDK runner then posts the operations of the batch's next event (the
    ``trialClosed`` following the ``trialExitedEarly``) to an experiment that is gone:
    the master refuses it and the runner raises, since the operations hold no ``Close``.
    """

    def simulate(hparams: dict[str, Any], length: int) -> TrialResult:
        return Errored()

    with MasterDouble(simulate) as master:
        with pytest.raises(errors.APIException, match="could not be found"):
            run_search(master, FailOnFirstExit(max_concurrent=1), model_dir)
        (record,) = master.experiments()

    assert record.state == "ERROR"
    assert [(p.accepted, p.error) for p in record.operations[-1:]] == [
        (False, "failed to post operations: experiment 1 could not be found")
    ]
    assert record.anomalies == ["operations posted after the experiment became ERROR"]


def test_event_queue_pause_long_poll_and_acknowledgement(model_dir: pathlib.Path) -> None:
    with MasterDouble() as master:
        d = client.Determined(master=master.url, user="determined", password="")
        session = d._session
        exp = d.create_experiment(CUSTOM_CONFIG, model_dir)

        def events() -> list[bindings.v1SearcherEvent]:
            return list(
                bindings.get_GetSearcherEvents(session, experimentId=exp.id).searcherEvents or []
            )

        first = events()
        assert [(e.id, e.initialOperations is not None) for e in first] == [(1, True)]
        assert [e.id for e in events()] == [1]  # not acknowledged: delivered again

        exp.pause()
        paused = events()
        assert [e.id for e in paused] == [-1]
        assert paused[0].experimentInactive is not None
        assert paused[0].experimentInactive.experimentState == bindings.experimentv1State.PAUSED
        exp.activate()

        def post(event: bindings.v1SearcherEvent) -> None:
            body = bindings.v1PostSearcherOperationsRequest(
                experimentId=exp.id, searcherOperations=[], triggeredByEvent=event
            )
            bindings.post_PostSearcherOperations(session, body=body, experimentId=exp.id)

        post(first[0])
        assert events() == []  # empty queue: the long poll times out with no events
        with pytest.raises(errors.APIException, match="failed to remove events from queue"):
            post(first[0])
        record = master.experiment(exp.id)

    assert record.deliveries == [[1], [1], [-1], []]
    assert [(p.event_id, p.accepted) for p in record.operations] == [(1, True), (1, False)]
    assert record.anomalies == ["operations posted for event 1, which is not in the queue"]


class RunnerCrash(Exception):
    """The runner process dies (raised from inside ``save_state``)."""


class FastRemoteRunner(searcher.RemoteSearchRunner):
    """``RemoteSearchRunner`` without the 1 s sleep between polls, able to crash on a save.

    ``attempted`` lists (event id, operations JSON) of every post it tried.
    """

    def __init__(
        self,
        search_method: searcher.SearchMethod,
        context: det.core.Context,
        crash_on_save: int | None = None,
    ) -> None:
        super().__init__(search_method, context)
        self.crash_on_save = crash_on_save
        self.saves = 0
        self.attempted: list[tuple[int, list[dict[str, Any]]]] = []

    def save_state(self, experiment_id: int, operations: list[searcher.Operation]) -> None:
        self.saves += 1
        if self.saves == self.crash_on_save:
            raise RunnerCrash(f"died before saving the state of event {self.state.last_event_id}")
        super().save_state(experiment_id, operations)

    def post_operations(
        self,
        session: api.Session,
        experiment_id: int,
        event: bindings.v1SearcherEvent,
        operations: list[searcher.Operation],
    ) -> None:
        ops = [op._to_searcher_operation().to_json(True) for op in operations]
        self.attempted.append((event.id, ops))
        super().post_operations(session, experiment_id, event, operations)

    def run_experiment(
        self,
        experiment_id: int,
        session: api.Session,
        prior_operations: list[searcher.Operation] | None,
        sleep_time: float = 1.0,
    ) -> None:
        super().run_experiment(experiment_id, session, prior_operations, sleep_time=0.0)


def run_remote(
    method: searcher.SearchMethod,
    model_dir: pathlib.Path,
    crash_on_save: int | None = None,
    runners: list[FastRemoteRunner] | None = None,
) -> int:
    """What the runner's trial container does: ``core.init()`` and ``RemoteSearchRunner``.

    TensorBoard is MANUAL because the venv has no TensorBoard writer (a cluster image has).
    The runner is appended to ``runners``, for inspection after a crash.
    """
    with det.core.init(tensorboard_mode=det.core.TensorboardMode.MANUAL) as context:
        runner = FastRemoteRunner(method, context, crash_on_save=crash_on_save)
        if runners is not None:
            runners.append(runner)
        return runner.run(CUSTOM_CONFIG, model_dir=str(model_dir))


def custom_experiment(master: MasterDouble) -> ExperimentRecord:
    (record,) = [exp for exp in master.experiments() if exp.custom]
    return record


@pytest.fixture
def on_cluster(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[MasterDouble, RunnerTask]]:
    with MasterDouble(throughput) as master:
        task = master.register_runner_task()
        enter_cluster_task(monkeypatch, master, task, tmp_path)
        yield master, task


def test_remote_runner_on_simulated_cluster_task(
    on_cluster: tuple[MasterDouble, RunnerTask], model_dir: pathlib.Path
) -> None:
    master, task = on_cluster
    exp_id = run_remote(TinyRandomSearch(), model_dir)
    record = master.experiment(exp_id)
    assert record.state == "COMPLETED" and len(record.trials) == 4
    assert record.anomalies == [] and not record.duplicate_creates()
    checkpoints = master.checkpoints(task.task_id)
    # One checkpoint for the initial state, then one per event, saved before its post.
    assert [c.metadata["steps_completed"] for c in checkpoints] == [0] + [
        p.event_id for p in record.operations
    ]
    assert {c.allocation_id for c in checkpoints} == {task.allocation_id}
    hits = master.routes_hit()
    auth_by_route = {(h.route, h.auth) for h in hits}
    assert ("create_experiment", "user") in auth_by_route
    assert ("report_checkpoint", "task") in auth_by_route
    assert ("run_prepare", "task") in auth_by_route
    assert master.unknown_routes() == []


@pytest.mark.parametrize("mode", ["crash_in_save_state", "post_error", "post_dropped_after_apply"])
def test_restarted_remote_runner_sees_unacknowledged_events_and_creates_nothing_twice(
    on_cluster: tuple[MasterDouble, RunnerTask],
    model_dir: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
    mode: str,
) -> None:
    """The first runner dies while handling event 6, the first ``trialClosed``.

    The operations for that event hold a ``Create`` (the method replaces the closed trial).

    - ``crash_in_save_state``: after posting the operations of event 5, before saving the
      state of event 6; 6 was never acknowledged, so the restarted runner gets it again
      and computes its operations afresh (the first runner's ``Create`` never reached the
      master).
    - ``post_error``: the master refuses the post of event 6 (HTTP 500, nothing applied);
      the restarted runner gets 6 again and resubmits the saved operations, the same
      ``Create`` request id included.
    - ``post_dropped_after_apply``: the master applied event 6's operations but the answer
      was lost; 6 is acknowledged, so the restarted runner does not get it again.
    """
    master, task = on_cluster
    crashed_event = 6
    crash_on_save = None
    if mode == "crash_in_save_state":
        crash_on_save = 7  # 1 initial save, then one per event: the 7th is event 6's
    elif mode == "post_error":
        master.fail_post_operations(crashed_event)
    else:
        master.fail_post_operations(crashed_event, action="drop", after_apply=True)

    first: list[FastRemoteRunner] = []
    with pytest.raises((RunnerCrash, errors.APIException, errors.MasterNotFoundException)):
        run_remote(TinyRandomSearch(seed=1), model_dir, crash_on_save, first)
    before = custom_experiment(master)
    assert before.event_kinds()[crashed_event - 1] == "trialClosed"
    acknowledged = mode == "post_dropped_after_apply"
    assert before.queue[0]["id"] == crashed_event + acknowledged
    latest = master.latest_checkpoint(task.task_id)
    assert latest is not None

    enter_cluster_task(monkeypatch, master, task, tmp_path, latest_checkpoint=latest)
    exp_id = run_remote(TinyRandomSearch(seed=2), model_dir)
    after = custom_experiment(master)

    assert exp_id == after.id == before.id  # the restarted runner resumed its experiment
    redelivered = any(
        crashed_event in batch for batch in after.deliveries[len(before.deliveries) :]
    )
    assert redelivered is not acknowledged
    accepted = {p.event_id: p.operations for p in after.operations if p.accepted}
    assert sorted(accepted) == [p.event_id for p in after.operations]  # one post per event
    attempted = dict(first[0].attempted)
    if mode == "crash_in_save_state":
        assert crashed_event not in attempted
    else:
        assert accepted[crashed_event] == attempted[crashed_event]
    assert "createTrial" in accepted[crashed_event][0]
    assert after.state == "COMPLETED" and len(after.trials) == 4
    assert not after.duplicate_creates() and after.anomalies == []
    assert master.unknown_routes() == []


def test_trial_progress_events_are_reported_before_validations(model_dir: pathlib.Path) -> None:
    with MasterDouble(throughput, report_progress=True) as master:
        _, _, exp_id = run_search(master, TinyRandomSearch(), model_dir)
        record = master.experiment(exp_id)

    kinds = record.event_kinds()
    assert kinds.count("trialProgress") == kinds.count("validationCompleted") == 4
    for i, kind in enumerate(kinds):
        if kind == "validationCompleted":
            progress = record.events_emitted[i - 1]["trialProgress"]
            request_id = record.events_emitted[i]["validationCompleted"]["requestId"]
            assert progress == {"requestId": request_id, "partialUnits": float(LENGTH)}
    by_event = {p.event_id: p.operations for p in record.operations}
    for event in record.events_emitted:
        if event_kind(event) == "trialProgress":
            assert [operation_kind(op) for op in by_event[event["id"]]] == ["Progress"]
    assert record.state == "COMPLETED" and record.anomalies == []


def test_invalid_config_is_refused_like_the_master(model_dir: pathlib.Path) -> None:
    def validator(config: dict[str, Any]) -> list[str]:
        return [] if "entrypoint" in config else ["<config>: entrypoint is required"]

    config = {k: v for k, v in CUSTOM_CONFIG.items() if k != "entrypoint"}
    with MasterDouble(config_validator=validator) as master:
        d = client.Determined(master=master.url, user="determined", password="")
        with pytest.raises(errors.APIException, match="entrypoint is required") as raised:
            d.create_experiment(config, model_dir)
        assert raised.value.status_code == 400
        assert master.experiments() == []


def test_operations_the_master_ignores_or_fails_on(model_dir: pathlib.Path) -> None:
    """Unknown trials and duplicate Creates are ignored; a repeated ValidateAfter fails it."""
    with MasterDouble(throughput) as master:
        d = client.Determined(master=master.url, user="determined", password="")
        session = d._session
        exp_id = d.create_experiment(CUSTOM_CONFIG, model_dir).id
        rid = uuid.uuid4()

        def step(*ops: searcher.Operation) -> list[bindings.v1SearcherEvent]:
            response = bindings.get_GetSearcherEvents(session, experimentId=exp_id)
            (event,) = response.searcherEvents or []
            body = bindings.v1PostSearcherOperationsRequest(
                experimentId=exp_id,
                searcherOperations=[op._to_searcher_operation() for op in ops],
                triggeredByEvent=event,
            )
            bindings.post_PostSearcherOperations(session, body=body, experimentId=exp_id)
            return [event]

        create = searcher.Create(rid, {"index": 1, "lr": 0.5}, checkpoint=None)
        step(create, searcher.Close(uuid.uuid4()))  # initialOperations
        step(create, searcher.ValidateAfter(rid, 4))  # trialCreated
        step(searcher.ValidateAfter(rid, 4))  # validationCompleted: the same op again
        inactive = bindings.get_GetSearcherEvents(session, experimentId=exp_id).searcherEvents
        final_state = d.get_experiment(exp_id).state
        record = master.experiment(exp_id)

    assert inactive is not None and inactive[0].experimentInactive is not None
    assert inactive[0].experimentInactive.experimentState.name == "STOPPING_ERROR"
    assert final_state == client.ExperimentState.ERROR
    assert record.event_kinds() == ["initialOperations", "trialCreated", "validationCompleted"]
    assert record.duplicate_creates() == [str(rid)]
    assert record.trials[str(rid)].validations == [(4, throughput({"lr": 0.5}, 4))]
    assert len(record.anomalies) == 3
    assert "no such trial" in record.anomalies[0]
    assert "already exists" in record.anomalies[1]
    assert "completed twice" in record.anomalies[2]
