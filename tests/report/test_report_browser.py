"""index.html in a real browser: headless Chromium renders the table and the images."""

from __future__ import annotations

import base64
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from ci_support import under_ci
from matplotlib.image import imread
from test_report_support import CONFIRMED_RUN, report, write_run

CHROMIUM = "/usr/bin/chromium"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def chromium(profile: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        if under_ci():
            pytest.fail(f"{CHROMIUM} is missing under CI: apt-get install -y chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    exe = CHROMIUM if os.path.exists(CHROMIUM) else str(shutil.which("chromium"))
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    # First starts are slow on a loaded 2-core machine (font cache, profile creation).
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def test_index_html_renders_in_headless_chromium(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = write_run(tmp_path / "run", CONFIRMED_RUN)
    assert report(run_dir, capsys)[0] == 0
    page = (run_dir / "report" / "index.html").as_uri()

    dom = chromium(tmp_path / "profile-dom", "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    table = dom.stdout[dom.stdout.index('class="trials"') :]
    trial_rows = re.findall(r"<tr class=\"\w*\">\s*<td class=\"num\">(\d+)</td>", table)
    assert [int(n) for n in trial_rows] == [d["trial_id"] for d in CONFIRMED_RUN]
    images = re.findall(r"<img src=\"data:image/png;base64,([^\"]+)\"", dom.stdout)
    assert len(images) == 3
    assert all(base64.b64decode(data).startswith(PNG_MAGIC) for data in images)
    assert "2.31× faster than your ds_config.json" in dom.stdout

    shot = tmp_path / "screenshot.png"
    result = chromium(
        tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1200,2000",
        "--hide-scrollbars", page,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    png = shot.read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 50_000
    pixels = imread(io.BytesIO(png), format="png")
    assert pixels.shape[:2] == (2000, 1200)
    colours = np.unique(pixels[..., :3].reshape(-1, 3), axis=0)
    assert len(colours) > 100  # text, coloured cells and plots, not a blank page
    keep = os.environ.get("DSAT_REPORT_SCREENSHOT")
    if keep:  # to look at it: DSAT_REPORT_SCREENSHOT=/tmp/shot.png pytest ...
        shutil.copy(shot, keep)


def test_missing_chromium_fails_under_ci_and_skips_elsewhere(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="missing under CI"):
        chromium(tmp_path)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        chromium(tmp_path)
