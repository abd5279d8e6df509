"""Under CI=true a skipped test fails; elsewhere it skips."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).parent
SKIPPING = """
import pytest

def test_skips_by_call():
    pytest.skip("no chromium here")

@pytest.mark.skip(reason="no schemas here")
def test_skips_by_mark():
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_failure():
    assert False

def test_passes():
    pass
"""


SKIPPED_MODULE = "import pytest\npytest.skip('module needs a GPU', allow_module_level=True)\n"


def _pytest(
    tmp_path: pathlib.Path, ci: str | None, test_file: str = SKIPPING
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(HERE)!r})\n"
        "from ci_support import pytest_make_collect_report, pytest_runtest_makereport\n"
    )
    (tmp_path / "test_inner.py").write_text(test_file)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("ci", ["true", "1"])
def test_skips_fail_under_ci(tmp_path: pathlib.Path, ci: str) -> None:
    run = _pytest(tmp_path, ci)
    assert run.returncode == 1, run.stdout
    summary = run.stdout.strip().splitlines()[-1]
    # A skip mark acts in setup, so that one is reported as an error: a failure either way.
    assert summary.startswith("1 failed, 1 passed, 1 xfailed, 1 error"), summary
    for reason in ("no chromium here", "no schemas here"):
        assert f"skipped under CI=true, which must run every test: {reason}" in run.stdout


def test_a_skipped_module_fails_collection_under_ci(tmp_path: pathlib.Path) -> None:
    run = _pytest(tmp_path, "true", SKIPPED_MODULE)
    assert run.returncode == 2, run.stdout  # an error during collection
    assert "skipped under CI=true, which must run every test: module needs a GPU" in (run.stdout)


@pytest.mark.parametrize("ci", [None, "false"])
def test_skips_skip_elsewhere(tmp_path: pathlib.Path, ci: str | None) -> None:
    run = _pytest(tmp_path, ci)
    assert run.returncode == 0, run.stdout
    summary = run.stdout.strip().splitlines()[-1]
    assert "1 passed" in summary and "2 skipped" in summary and "1 xfailed" in summary
    assert _pytest(tmp_path, ci, SKIPPED_MODULE).returncode == 5  # nothing ran: all skipped
