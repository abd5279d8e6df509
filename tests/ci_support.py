"""CI honesty: under ``CI=true`` a test that cannot check its contract fails, never skips.

``tests/conftest.py`` installs the hooks below: under CI every skip (a ``skip`` mark, a
``pytest.skip()`` call, a skipped module) is reported as a failure with its reason.
Expected failures (``xfail``) stay what they are.
"""

from __future__ import annotations

import os
from typing import Any

import pytest


def under_ci() -> bool:
    """Whether ``$CI`` says this run is CI (``scripts/test.sh`` sets it under ``.ci/run``)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _fail_skips_under_ci(report: pytest.CollectReport | pytest.TestReport) -> None:
    """Under CI=true a skip is a failure: whatever could not be checked there was not."""
    if under_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under CI=true, which must run every test: {_skip_reason(report)}"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    _fail_skips_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    outcome = yield
    _fail_skips_under_ci(outcome.get_result())
