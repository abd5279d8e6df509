"""``MasterDouble``: the master double's HTTP server, introspection and control hooks."""

from __future__ import annotations

import copy
import json
import re
import threading
import urllib.parse
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal

import yaml

from .live import LiveTrialState
from .records import (
    USER_TOKEN,
    CheckpointRecord,
    ExperimentRecord,
    FaultRule,
    RouteHit,
    RunnerTask,
)
from .routes import ROUTES
from .shapes import runner_config
from .wire import HttpError, HTTPServer, Request, Route, error_body


class MasterDouble(LiveTrialState):
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
        checkpoint_storage: the cluster's default checkpoint storage, which the master puts
            in a task's config when the experiment's config has none (default: shared_fs
            with host path ``/tmp/master-double-host``).

    Live trials (``Live``) run in real processes; see ``live.py``.
    """

    # -- lifecycle --

    def start(self) -> MasterDouble:
        """Bind a free port on 127.0.0.1 and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("the master double is already running")
        self._closing = False
        self._server = HTTPServer(self)
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
                conf.setdefault("checkpoint_storage", runner_config()["checkpoint_storage"])
            else:
                conf = dict(config) if config is not None else runner_config()
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
            return None if status is None else (status, error_body(status, fault.message))

        outcome = self._run_route(route, method, path, parsed.query, params, raw, auth)
        if fault is not None:
            status = None if fault.action == "drop" else fault.status
            record(status)
            return None if status is None else (status, error_body(status, fault.message))
        record(outcome[0])
        return outcome

    def _run_route(
        self,
        route: Route | None,
        method: str,
        path: str,
        query: str,
        params: dict[str, str],
        raw: bytes,
        auth: Literal["user", "task"] | None,
    ) -> tuple[int, Any]:
        if route is None:
            return 404, error_body(404, f"no route for {method} {path} in the master double")
        if route.authenticated and auth is None:
            return 401, error_body(401, "unauthenticated")
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return 400, error_body(400, "request body is not JSON")
        request = Request(method, path, urllib.parse.parse_qs(query), params, body, auth)
        try:
            return 200, route.handler(self, request)
        except HttpError as e:
            return e.status, error_body(e.status, e.message)

    @staticmethod
    def _route(method: str, path: str) -> tuple[Route | None, dict[str, str]]:
        for route in ROUTES:
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
