"""Every route the master double serves (anything else is answered 404 and recorded)."""

from __future__ import annotations

from . import experiment_routes, trial_routes
from .wire import Route, route

_EXP = r"/api/v1/experiments/(?P<id>\d+)"
ROUTES: tuple[Route, ...] = (
    route("GET", r"/info", experiment_routes.info, authenticated=False),
    route("GET", r"/api/v1/master", experiment_routes.get_master, authenticated=False),
    route("POST", r"/api/v1/auth/login", experiment_routes.login, authenticated=False),
    route("POST", r"/api/v1/auth/logout", experiment_routes.logout),
    route("GET", r"/api/v1/me", experiment_routes.get_me),
    route("POST", r"/api/v1/experiments", experiment_routes.create_experiment),
    route("GET", _EXP, experiment_routes.get_experiment),
    route(
        "POST",
        _EXP + r"/(?P<action>activate|pause|cancel|kill)",
        experiment_routes.experiment_action,
    ),
    route("GET", _EXP + r"/trials", experiment_routes.get_experiment_trials),
    route("GET", _EXP + r"/searcher_events", experiment_routes.get_searcher_events),
    route("POST", _EXP + r"/searcher_operations", experiment_routes.post_searcher_operations),
    route("GET", r"/api/v1/trials/(?P<id>\d+)", trial_routes.get_trial),
    route(
        "POST",
        r"/api/v1/trials/(?P<id>\d+)/(?P<kind>progress|metrics|runner/metadata|early_exit)",
        trial_routes.trial_report,
    ),
    route(
        "GET", r"/api/v1/trials/(?P<id>\d+)/searcher/operation", trial_routes.get_searcher_operation
    ),
    route(
        "POST",
        r"/api/v1/trials/(?P<id>\d+)/searcher/completed_operation",
        trial_routes.complete_searcher_operation,
    ),
    route("POST", r"/api/v1/runs/start", trial_routes.run_prepare),
    route("POST", r"/api/v1/checkpoints", trial_routes.report_checkpoint),
    route("PATCH", r"/api/v1/checkpoints", trial_routes.patch_checkpoints),
    route("GET", r"/api/v1/checkpoints/(?P<uuid>[^/]+)", trial_routes.get_checkpoint),
    route(
        "GET",
        r"/api/v1/allocations/(?P<id>[^/]+)/signals/preemption",
        trial_routes.preemption_signal,
    ),
    route(
        "POST",
        r"/api/v1/allocations/(?P<id>[^/]+)/signals/ack_preemption",
        trial_routes.ack_preemption,
    ),
    route(
        "GET",
        r"/api/v1/allocations/(?P<id>[^/]+)/resources/(?P<resources_id>[^/]+)/rendezvous",
        trial_routes.rendezvous_info,
    ),
    route(
        "POST", r"/api/v1/allocations/(?P<id>[^/]+)/acceleratorData", trial_routes.accelerator_data
    ),
    route(
        "GET",
        r"/api/v1/tasks/(?P<task_id>[^/]+)/context_directory",
        trial_routes.task_context_directory,
    ),
)
"""Every route the double serves; anything else is answered 404 and recorded."""


def served_routes() -> list[tuple[str, str]]:
    """(method, path pattern) of every route the double serves."""
    return [(served.method, served.pattern.pattern) for served in ROUTES]
