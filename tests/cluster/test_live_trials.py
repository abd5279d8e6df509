"""Live trials: the trial-side searcher API of the master double, seen from determined's SDK.

The searcher side is determined's ``SearchRunner`` (a one-trial search, in a thread); the
trial side is ``det.core.init()`` in this process (``enter_cluster_task``), or determined's
API bindings for what the SDK would never send. Neither knows it talks to a double.
"""

from __future__ import annotations

import base64
import io
import json
import pathlib
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import determined as det
import pytest
from determined import searcher
from determined.common import api
from determined.common.api import bindings, errors
from determined.experimental import client
from master_double import USERNAME, Live, MasterDouble, enter_cluster_task
from master_double.container import run_container
from master_double.one_trial import OneTrialSearch, SearchThread

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

LENGTH = 6
CONFIG: dict[str, Any] = {
    "name": "live-trials",
    "entrypoint": "python3 train.py",
    "searcher": {"name": "custom", "metric": "throughput", "smaller_is_better": False},
    "hyperparameters": {"lr": 0.1},
    "resources": {"slots_per_trial": 2},
    "max_restarts": 0,
}
METRIC = {"throughput": 12.5, "latency": 0.08, "FLOPS_per_gpu": 1.0e9}


@pytest.fixture(autouse=True)
def det_home(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DET_DEBUG_CONFIG_PATH", str(tmp_path / "det-config"))
    for name in ("DET_MASTER", "DET_USER", "DET_USER_TOKEN", "DET_PASS", "DET_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(client, "_determined", None)


@pytest.fixture
def model_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "model"
    path.mkdir()
    (path / "train.py").write_text("print('a trial')\n")
    (path / "data").mkdir()
    (path / "data" / "tokens.txt").write_text("a b c\n")
    return path


@pytest.fixture
def search(model_dir: pathlib.Path) -> Iterator[tuple[MasterDouble, SearchThread, OneTrialSearch]]:
    with MasterDouble(lambda hparams, length: Live()) as master:
        method = OneTrialSearch({"lr": 0.1}, LENGTH)
        thread = SearchThread(master, method, CONFIG, model_dir)
        thread.start()
        yield master, thread, method


def task_session(master: MasterDouble, token: str) -> api.Session:
    return api.TaskSession(master=master.url, username=USERNAME, token=token, cert=None)


def test_a_trial_completes_its_operation_with_the_core_api(
    search: tuple[MasterDouble, SearchThread, OneTrialSearch],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
) -> None:
    master, thread, method = search
    trial = thread.wait_for_operation()
    task = master.trial_task(trial.trial_id)
    enter_cluster_task(monkeypatch, master, task, tmp_path)
    master.trial_started(trial.trial_id)
    manual = det.core.TensorboardMode.MANUAL
    with det.core.init(tensorboard_mode=manual) as context:
        assert det.get_cluster_info().trial.hparams == {"lr": 0.1}  # type: ignore[union-attr]
        (op,) = [next(iter(context.searcher.operations()))]
        assert op.length == LENGTH
        op.report_progress(3)
        context.train.report_validation_metrics(steps_completed=LENGTH, metrics=METRIC)
        op.report_completed(METRIC)
        # The search closes the trial while it runs: the master asks it to stop.
        deadline = time.monotonic() + 10
        while not context.preempt.should_preempt() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert context.preempt.should_preempt()
    master.trial_exited(trial.trial_id, 0)
    thread.finish()

    record = master.experiment(thread.experiment_id)
    assert method.completions == [(METRIC, LENGTH)]
    assert record.event_kinds() == [
        "initialOperations",
        "trialCreated",
        "trialProgress",
        "validationCompleted",
        "trialClosed",
    ]
    rid = str(method.request_id)
    assert record.events_emitted[2]["trialProgress"] == {"requestId": rid, "partialUnits": 3.0}
    assert record.events_emitted[3]["validationCompleted"] == {
        "requestId": rid,
        "metric": METRIC,
        "validateAfterLength": str(LENGTH),
    }
    assert record.state == "COMPLETED" and record.trials[rid].state == "COMPLETED"
    assert task.config["scheduling_unit"] == 100 and task.config["checkpoint_storage"]
    reported = [b for t, kind, b in master.trial_reports() if t == trial.trial_id]
    (validation,) = [b for b in reported if b.get("group") == "validation"]
    assert validation["metrics"]["metrics"]["avgMetrics"] == METRIC
    hits = {(h.route, h.auth) for h in master.routes_hit()}
    assert ("get_searcher_operation", "task") in hits
    assert ("complete_searcher_operation", "task") in hits
    assert record.anomalies == [] and master.unknown_routes() == []


def test_completing_another_length_or_twice_is_refused(
    search: tuple[MasterDouble, SearchThread, OneTrialSearch],
) -> None:
    master, thread, method = search
    trial = thread.wait_for_operation()
    session = task_session(master, master.trial_task(trial.trial_id).session_token)

    def complete(length: int) -> None:
        body = bindings.v1CompleteValidateAfterOperation(
            op=bindings.v1ValidateAfterOperation(length=str(length)), searcherMetric=METRIC
        )
        bindings.post_CompleteTrialSearcherValidation(session, body=body, trialId=trial.trial_id)

    current = bindings.get_GetCurrentTrialSearcherOperation(session, trialId=trial.trial_id)
    assert current.completed is False and current.op is not None
    assert current.op.validateAfter is not None and current.op.validateAfter.length == "6"
    with pytest.raises(errors.APIException, match="expected op"):
        complete(LENGTH + 1)
    complete(LENGTH)
    with pytest.raises(errors.APIException, match="previously completed"):
        complete(LENGTH)
    after = bindings.get_GetCurrentTrialSearcherOperation(session, trialId=trial.trial_id)
    assert after.completed is True
    master.trial_exited(trial.trial_id, 0)
    thread.finish()
    assert method.completions == [(METRIC, LENGTH)]


@pytest.mark.parametrize(
    ("exit_code", "reported", "reason"),
    [
        (1, None, searcher.ExitedReason.ERRORED),
        (0, "EXITED_REASON_INVALID_HP", searcher.ExitedReason.INVALID_HP),
    ],
    ids=["crash", "invalid_hp"],
)
def test_a_trial_that_ends_without_completing_exits_early(
    search: tuple[MasterDouble, SearchThread, OneTrialSearch],
    exit_code: int,
    reported: str | None,
    reason: searcher.ExitedReason,
) -> None:
    master, thread, method = search
    trial = thread.wait_for_operation()
    session = task_session(master, master.trial_task(trial.trial_id).session_token)
    if reported is not None:
        body = bindings.v1TrialEarlyExit(reason=bindings.v1TrialEarlyExitExitedReason(reported))
        bindings.post_ReportTrialSearcherEarlyExit(session, body=body, trialId=trial.trial_id)
    master.trial_exited(trial.trial_id, exit_code)
    thread.finish()
    record = master.experiment(thread.experiment_id)
    assert method.exits == [reason] and method.completions == []
    assert record.event_kinds()[-2:] == ["trialExitedEarly", "trialClosed"]
    assert record.anomalies == []


def test_an_exit_without_completing_the_operation_is_an_anomaly(
    search: tuple[MasterDouble, SearchThread, OneTrialSearch],
) -> None:
    master, thread, _ = search
    trial = thread.wait_for_operation()
    master.trial_exited(trial.trial_id, 0)
    with pytest.raises(AssertionError, match="exited 0 without completing ValidateAfter"):
        thread.finish(timeout_s=0.5)


def test_a_container_gets_its_files_and_rendezvous(
    search: tuple[MasterDouble, SearchThread, OneTrialSearch],
) -> None:
    master, thread, _ = search
    trial = thread.wait_for_operation()
    task = master.trial_task(trial.trial_id)
    session = task_session(master, task.session_token)
    tgz = bindings.get_GetTaskContextDirectory(session, taskId=task.task_id).b64Tgz
    with tarfile.open(fileobj=io.BytesIO(base64.b64decode(tgz)), mode="r:gz") as archive:
        names = sorted(m.name for m in archive.getmembers() if m.isfile())
        member = archive.extractfile("data/tokens.txt")
        assert member is not None and member.read() == b"a b c\n"
    assert names == ["data/tokens.txt", "train.py"]
    rendezvous = bindings.get_AllocationRendezvousInfo(
        session, allocationId=task.allocation_id, resourcesId="r1"
    ).rendezvousInfo
    assert (rendezvous.addresses, rendezvous.rank, rendezvous.slots) == (["127.0.0.1"], 0, [2])
    data = bindings.v1AcceleratorData(allocationId=task.allocation_id, acceleratorType="cpu")
    bindings.post_PostAllocationAcceleratorData(
        session,
        allocationId=task.allocation_id,
        body=bindings.v1PostAllocationAcceleratorDataRequest(
            allocationId=task.allocation_id, acceleratorData=data
        ),
    )
    stranger = task_session(master, "not-a-token")
    with pytest.raises(errors.UnauthenticatedException):
        bindings.get_GetCurrentTrialSearcherOperation(stranger, trialId=trial.trial_id)
    assert master.unknown_routes() == []


CORE_API_TRIAL = """
import determined as det

hparams = det.get_cluster_info().trial.hparams
with det.core.init(tensorboard_mode=det.core.TensorboardMode.MANUAL) as context:
    for op in context.searcher.operations():
        metrics = {"throughput": 100 * hparams["lr"], "length": op.length}
        op.report_progress(op.length)
        context.train.report_validation_metrics(steps_completed=op.length, metrics=metrics)
        op.report_completed(metrics)
"""


def test_a_container_boots_like_on_an_agent_and_completes_its_operation(
    model_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """prep_container, exec.launch and the entrypoint, in a private mount namespace."""
    (model_dir / "train.py").write_text(CORE_API_TRIAL)
    storage = {"type": "directory", "container_path": str(tmp_path / "checkpoints")}
    config = {**CONFIG, "resources": {"slots_per_trial": 1}}
    with MasterDouble(lambda hparams, length: Live(), checkpoint_storage=storage) as master:
        method = OneTrialSearch({"lr": 0.25}, LENGTH)
        thread = SearchThread(master, method, config, model_dir)
        thread.start()
        trial = thread.wait_for_operation()
        task = master.trial_task(trial.trial_id)
        box = run_container(master, task, tmp_path / "container", timeout_s=120)
        thread.finish()
        record = master.experiment(thread.experiment_id)
        routes = {h.route for h in master.routes_hit() if h.auth == "task"}
        unknown = master.unknown_routes()

    assert box.proc.returncode == 0, box.log[-4000:]
    assert method.completions == [({"throughput": 25.0, "length": LENGTH}, LENGTH)]
    assert record.event_kinds()[-3:] == ["trialProgress", "validationCompleted", "trialClosed"]
    assert (box.work_dir / "data" / "tokens.txt").read_text() == "a b c\n"
    info = json.loads((box.run_dir / "determined" / "info" / "trial.json").read_text())
    assert info["trial_id"] == trial.trial_id and info["hparams"] == {"lr": 0.25}
    assert {"task_context_directory", "rendezvous_info", "accelerator_data"} <= routes
    assert {"get_searcher_operation", "complete_searcher_operation", "ack_preemption"} <= routes
    assert record.anomalies == [] and unknown == []
