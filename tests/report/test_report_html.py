"""``dsat report``: the PNG plots and the self-contained index.html (no browser needed)."""

from __future__ import annotations

import base64
import html
import io
import pathlib
import re

import numpy as np
import pytest
from matplotlib.image import imread
from test_report_support import CONFIRMED_RUN, report, write_run

from determined_dsat.report.plots import PLOTS, metric_axis
from determined_dsat.space.metric import Metric

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def distinct_colours(png: bytes) -> int:
    pixels = imread(io.BytesIO(png), format="png")
    return len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0))


@pytest.fixture
def run_dir(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> pathlib.Path:
    path = write_run(tmp_path / "run", CONFIRMED_RUN)
    code, _, err = report(path, capsys)
    assert code == 0, err
    return path


def test_plots_are_real_pngs(run_dir: pathlib.Path) -> None:
    for name in PLOTS:
        png = (run_dir / "report" / name).read_bytes()
        assert png.startswith(PNG_MAGIC), name
        height, width = imread(io.BytesIO(png), format="png").shape[:2]
        assert width >= 700 and height >= 400, (name, width, height)
        assert distinct_colours(png) > 50, name  # text, markers and lines, not a blank canvas


def test_page_embeds_every_plot_and_requests_nothing(run_dir: pathlib.Path) -> None:
    page = (run_dir / "report" / "index.html").read_text()
    sources = re.findall(r"<img src='([^']*)'", page)
    assert len(sources) == len(PLOTS)
    for src, name in zip(sources, PLOTS):
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png == (run_dir / "report" / name).read_bytes()
    assert not re.search(r"(src|href)=['\"]?(https?:|//|file:)", page)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert "Content-Security-Policy" in page


def test_page_lists_every_trial_escaped_and_coloured(run_dir: pathlib.Path) -> None:
    page = (run_dir / "report" / "index.html").read_text()
    table = page[page.index("<table class='trials'>") :]
    rows = re.findall(r"<tr class='(\w*)'>(.*?)</tr>", table)
    assert len(rows) == len(CONFIRMED_RUN)
    statuses = [re.findall(r"<td class='st-(\w+)'>(\w+)</td>", cells)[0] for _, cells in rows]
    assert statuses == [(d["status"], d["status"]) for d in CONFIRMED_RUN]
    roles = {cells.split("</td>")[0].rsplit(">", 1)[1]: role for role, cells in rows if role}
    assert roles == {"6": "winner", "2": "baseline"}
    detail = next(d["detail"] for d in CONFIRMED_RUN if "<script>" in d["detail"])
    assert html.escape(detail) in page and detail not in page
    assert "confirm of #6" in table
    # The summary is there too, as HTML.
    assert "<h2>Best configuration</h2>" in page
    assert "2.31× faster than your ds_config.json" in page
    assert "<td>z2 (best)</td>" in page


@pytest.mark.parametrize(
    ("metric", "values", "scale", "unit"),
    [
        (Metric.THROUGHPUT, [1234.0], 1.0, "(samples/s)"),
        (Metric.FLOPS_PER_GPU, [3.2e13, 9e12], 1e-12, "(TFLOP/s)"),
        (Metric.FLOPS_PER_GPU, [5.5e16], 1e-15, "(PFLOP/s)"),
        (Metric.LATENCY, [0.0075], 1000.0, "(ms)"),
    ],
)
def test_axis_units_follow_console_units(
    metric: Metric, values: list[float], scale: float, unit: str
) -> None:
    got_scale, label = metric_axis(metric, values)
    assert got_scale == pytest.approx(scale)
    assert label.endswith(unit)


def test_plots_of_a_run_with_no_success_still_render(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = [d for d in CONFIRMED_RUN if d["status"] != "ok"]
    path = write_run(tmp_path / "run", failed, best=False)
    assert report(path, capsys)[0] == 0
    for name in PLOTS:
        assert (path / "report" / name).read_bytes().startswith(PNG_MAGIC)
    page = (path / "report" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == len(PLOTS)
