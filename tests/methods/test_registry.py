"""One table of methods: a method registered once appears in the CLI, the settings' JSON
and the search, with nothing else to edit."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import pytest
import toy_method

from determined_dsat import cli
from determined_dsat.methods import registry
from determined_dsat.settings import SearchSettings

REPO = pathlib.Path(__file__).resolve().parents[2]
REPLAY = REPO / "examples" / "replay"


@pytest.fixture
def toy() -> Iterator[None]:
    registry.register(toy_method.METHOD)
    try:
        yield
    finally:
        registry.unregister(toy_method.METHOD.name)


def test_a_registered_method_runs_through_the_cli(
    toy: None, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    argv = [
        "toy", str(REPLAY / "deepspeed.yaml"), str(REPLAY), "--backend", "replay",
        "--replay-source", f"{REPLAY / 'landscape.py'}:measure", "--largest", "4",
        "--max-trials", "10", "--no-baseline", "--confirm-top", "0", "-z", "2",
        "--run-dir", str(run),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    lines = [json.loads(x) for x in (run / "trials.jsonl").read_text().splitlines()]
    search = [line for line in lines if line["kind"] == "search"]
    assert sorted(line["mbs"] for line in search) == [1, 2, 3, 4]
    assert {line["stage"] for line in search} == {2}
    saved = SearchSettings.from_json(json.loads((run / "settings.json").read_text()))
    assert saved.method == "toy" and saved.method_options == toy_method.ToyOptions(4)
    assert "exhausted" in capsys.readouterr().out


def test_its_flags_are_its_own(toy: None) -> None:
    parser = cli.build_parser()
    assert "--largest" in parser.format_help() or "toy" in parser.format_help()
    with pytest.raises(cli.ConfigError, match="--largest must be at least 1, got 0"):
        cli.parse_settings(["toy", "c.yaml", ".", "--largest", "0"])
    with pytest.raises(cli.ConfigError, match="unrecognized arguments: --largest"):
        cli.parse_settings(["binary", "c.yaml", ".", "--largest", "2"])


def test_names_must_be_new_and_known() -> None:
    with pytest.raises(ValueError, match="registered already"):
        registry.register(registry.get("binary"))
    with pytest.raises(ValueError, match="unknown search method 'nope'"):
        registry.get("nope")
    with pytest.raises(TypeError, match="takes BinaryOptions"):
        registry.get("binary").make_policy(None, object())  # type: ignore[arg-type]
