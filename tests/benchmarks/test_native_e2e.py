"""The end-to-end benchmark against DeepSpeed's autotuner: its pure parts.

Parsing DeepSpeed's results folder and picking its winner, reading our run directory,
the tools' command lines, the alternating schedule, the records' arithmetic and the
report. Nothing here runs a tuner.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
import torch

from benchmarks import native_e2e
from benchmarks import native_e2e_native as native
from benchmarks import native_e2e_ours as ours
from benchmarks.e2e_models.models import (
    build_model,
    format_dims,
    make_batch,
    num_params,
    parse_dims,
)
from benchmarks.native_e2e_measure import (
    alternating_schedule,
    measure_alternately,
    measurement_from,
)
from benchmarks.native_e2e_proc import child_env, format_duration, remove_allreduce_buffers
from benchmarks.native_e2e_records import (
    NATIVE,
    OURS,
    SAME_CAP,
    CaseResult,
    Measurement,
    ModelCase,
    Pick,
    TunerRun,
)
from benchmarks.native_e2e_report import ReportContext, markdown, report_json

OOM_LINE = (
    "RuntimeError: [enforce fail at alloc_cpu.cpp:119] DefaultCPUAllocator: "
    "can't allocate memory: you tried to allocate 123 bytes.\n"
)
WARNING_ONLY = "FutureWarning: `torch.distributed.all_gather_into_tensor` is deprecated.\n"


def write_experiment(
    results: pathlib.Path,
    exp_id: int,
    name: str,
    *,
    mbs: int,
    stage: int,
    throughput: float | None,
    stderr: str = WARNING_ONLY,
) -> dict[str, Any]:
    """One experiment folder as DeepSpeed 0.19.8's scheduler leaves it."""
    folder = results / name
    folder.mkdir(parents=True)
    ds_config = {
        "train_micro_batch_size_per_gpu": mbs,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "autotuning": {"enabled": True, "metric_path": str(folder / "metrics.json")},
    }
    (folder / "exp.json").write_text(json.dumps({"exp_id": exp_id, "name": name}))
    (folder / "ds_config.json").write_text(json.dumps(ds_config))
    (folder / "stderr.log").write_text(stderr)
    if throughput is not None:
        metrics = {"throughput": throughput, "latency": 1.0, "FLOPS_per_gpu": 2.0}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return ds_config


@pytest.fixture
def results(tmp_path: pathlib.Path) -> pathlib.Path:
    """A results folder: profile, three stage-0 probes (one OOM) and two stage-1 probes."""
    root = tmp_path / "autotuning_results"
    write_experiment(root, 0, "profile_model_info", mbs=1, stage=3, throughput=None)
    write_experiment(root, 1, "z0_gas1_tmbspg4", mbs=4, stage=0, throughput=100.0)
    write_experiment(root, 2, "z0_gas1_tmbspg32", mbs=32, stage=0, throughput=250.0)
    write_experiment(root, 3, "z0_gas1_tmbspg34", mbs=34, stage=0, throughput=None, stderr=OOM_LINE)
    write_experiment(root, 4, "z1_gas1_tmbspg32", mbs=32, stage=1, throughput=240.0)
    # A run that wrote metrics but whose log has an error mark counts as failed.
    write_experiment(
        root,
        5,
        "z1_gas1_tmbspg16",
        mbs=16,
        stage=1,
        throughput=999.0,
        stderr="torch.distributed error: connection reset\n",
    )
    (root / "summary.txt").write_text("not an experiment")
    (root / "not_launched").mkdir()  # an experiment folder without exp.json
    return root


def test_first_error_follows_deepspeeds_marks() -> None:
    assert native.first_error(WARNING_ONLY) is None
    assert native.first_error("all good\nRuntimeError: boom\nValueError: later") == "boom"
    assert native.first_error("an ERROR: disk full") == "disk full"
    assert native.first_error("") is None


def test_experiments_are_read_in_launch_order_with_outcomes(results: pathlib.Path) -> None:
    experiments = native.read_experiments(results)
    assert [e.exp_id for e in experiments] == [0, 1, 2, 3, 4, 5]
    outcomes = [e.outcome for e in experiments]
    assert outcomes == ["ok", "ok", "ok", "oom", "ok", "error"]
    assert experiments[0].is_profile and not experiments[1].is_profile


def test_winner_is_the_best_successful_experiment(results: pathlib.Path) -> None:
    winner = native.pick_winner(native.read_experiments(results), "throughput")
    assert winner is not None and winner.name == "z0_gas1_tmbspg32"
    latency = native.pick_winner(native.read_experiments(results), "latency")
    assert latency is not None and latency.name == "z0_gas1_tmbspg4"  # first of the ties


def test_winner_is_none_without_a_successful_search_experiment(tmp_path: pathlib.Path) -> None:
    write_experiment(tmp_path, 0, "profile_model_info", mbs=1, stage=3, throughput=None)
    write_experiment(tmp_path, 1, "z0_gas1_tmbspg4", mbs=4, stage=0, throughput=None)
    assert native.pick_winner(native.read_experiments(tmp_path), "throughput") is None
    found = native.read_findings(tmp_path)
    assert found.ds_config is None and found.pick is None and found.metric is None
    assert native.read_findings(tmp_path / "missing").experiments == ()


def test_findings_without_optimal_config_use_the_best_experiment(results: pathlib.Path) -> None:
    found = native.read_findings(results)
    assert found.metric == 250.0
    assert found.ds_config is not None and "autotuning" not in found.ds_config
    assert found.pick == Pick(stage=0, mbs=32, gas=1, knobs={})
    assert found.outcomes == {"ok": 4, "oom": 1, "error": 1}
    assert any("no ds_config_optimal.json" in note for note in found.notes)


def test_findings_prefer_deepspeeds_optimal_config(results: pathlib.Path) -> None:
    optimal = {"train_micro_batch_size_per_gpu": 32, "zero_optimization": {"stage": 0}}
    optimal["gradient_accumulation_steps"] = 1
    (results / native.OPTIMAL_CONFIG).write_text(json.dumps(optimal))
    found = native.read_findings(results)
    assert found.ds_config == optimal and found.notes == ()
    other = {**optimal, "train_micro_batch_size_per_gpu": 4}
    (results / native.OPTIMAL_CONFIG).write_text(json.dumps(other))
    found = native.read_findings(results)
    assert found.ds_config == other and found.pick is not None and found.pick.mbs == 4
    assert any("differs" in note for note in found.notes)


def test_native_ds_config_adds_stages_and_a_fast_section(tmp_path: pathlib.Path) -> None:
    base = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 0}}
    made = native.native_ds_config(
        base,
        stages=(0, 1, 2, 3),
        cap=32,
        start_profile_step=3,
        end_profile_step=5,
        results_dir=tmp_path / "r",
        exps_dir=tmp_path / "e",
    )
    assert base == {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 0}}
    assert made["zero_optimization"] == {"stage": [0, 1, 2, 3]}
    section = made["autotuning"]
    assert section["enabled"] and section["fast"] and section["metric"] == "throughput"
    assert section["max_train_micro_batch_size_per_gpu"] == 32
    assert (section["start_profile_step"], section["end_profile_step"]) == (3, 5)
    assert section["results_dir"] == str(tmp_path / "r")
    uncapped = native.native_ds_config(
        base,
        stages=(1,),
        cap=None,
        start_profile_step=3,
        end_profile_step=5,
        results_dir=tmp_path,
        exps_dir=tmp_path,
    )
    assert "max_train_micro_batch_size_per_gpu" not in uncapped["autotuning"]


def test_native_command_runs_one_slot_of_the_script(tmp_path: pathlib.Path) -> None:
    command = native.native_command(
        "deepspeed", tmp_path / "train.py", tmp_path / "ds.json", ["--model", "gpt"], 4242
    )
    assert command[:5] == ["deepspeed", "--autotuning", "tune", "--num_gpus", "1"]
    assert command[command.index("--master_port") + 1] == "4242"
    script = command.index(str(tmp_path / "train.py"))
    assert command[script + 1 :] == [
        "--deepspeed_config",
        str(tmp_path / "ds.json"),
        "--model",
        "gpt",
    ]


def _dsat(cap: int | None, memory: int) -> list[str]:
    return ours.dsat_command(
        "python",
        "model",
        pathlib.Path("exp.yaml"),
        pathlib.Path("model"),
        pathlib.Path("run"),
        stages=(0, 1, 2, 3),
        start_profile_step=3,
        end_profile_step=5,
        cap=cap,
        memory_limit_mib=memory,
    )


def test_dsat_command_passes_the_cap_only_when_asked() -> None:
    capped = _dsat(32, 8192)
    assert capped[:4] == ["python", "-m", "determined_dsat", "model"]
    assert capped[capped.index("--max-mbs") + 1] == "32"
    assert capped[capped.index("--max-concurrent-trials") + 1] == "1"
    assert capped[capped.index("--backend") + 1] == "local"
    assert capped[capped.index("--trial-memory-limit") + 1] == "8192"
    stages = capped.index("--zero-stages")
    assert capped[stages + 1 : stages + 5] == ["0", "1", "2", "3"]
    plain = _dsat(None, 0)
    assert "--max-mbs" not in plain and "--trial-memory-limit" not in plain


def test_dsat_knows_reads_the_installed_help() -> None:
    env = child_env(pathlib.Path("/tmp/unused-ext"))
    assert ours.dsat_knows(sys.executable, "model", "--max-trials", env)
    assert not ours.dsat_knows(sys.executable, "model", "--max-trial", env)


def test_experiment_files_for_our_dsat(tmp_path: pathlib.Path) -> None:
    model = ModelCase("gpt", "gpt", {"n_layer": 2}, "tiny")
    script = tmp_path / "train.py"
    script.write_text("")
    config_path, model_dir = ours.prepare_experiment(
        tmp_path / "case", model, script, ["--model", "gpt"], {"train_micro_batch_size_per_gpu": 4}
    )
    assert (model_dir / "train.py").resolve() == script.resolve()
    assert json.loads((model_dir / "ds_config.json").read_text()) == {
        "train_micro_batch_size_per_gpu": 4
    }
    import yaml

    config = yaml.safe_load(config_path.read_text())
    assert config["entrypoint"].endswith("python3 train.py --model gpt")
    assert config["resources"]["slots_per_trial"] == 1
    assert config["hyperparameters"]["deepspeed_config"] == "ds_config.json"


def test_our_run_directory_is_read(tmp_path: pathlib.Path) -> None:
    rows = [
        {"kind": "profile", "status": "ok"},
        {"kind": "baseline", "status": "ok"},
        {"kind": "search", "status": "oom"},
        {"kind": "search", "status": "ok"},
        {"kind": "confirm", "status": "ok"},
    ]
    torn = '{"kind": "search", "sta'
    (tmp_path / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + torn)
    best = {
        "train_micro_batch_size_per_gpu": 24,
        "gradient_accumulation_steps": 2,
        "zero_optimization": {"stage": 2, "overlap_comm": True},
    }
    (tmp_path / "best_ds_config.json").write_text(json.dumps(best))
    (tmp_path / "best_ds_metrics.json").write_text(json.dumps({"throughput": 321.5}))
    found = ours.read_findings(tmp_path)
    assert len(found.trials) == 5
    assert found.outcomes == {"ok": 4, "oom": 1}
    assert found.kinds == {"profile": 1, "baseline": 1, "search": 2, "confirm": 1}
    assert found.pick == Pick(stage=2, mbs=24, gas=2, knobs={"overlap_comm": True})
    assert found.metric == 321.5
    empty = ours.read_findings(tmp_path / "nothing")
    assert empty.trials == () and empty.pick is None and empty.metric is None


def test_pick_description_names_every_knob() -> None:
    pick = Pick.from_ds_config(
        {"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 3, "b": 2, "a": 1}}
    )
    assert pick.describe() == "ZeRO 3, mbs 8 x gas 1, a=1, b=2"
    assert Pick.from_ds_config({}).describe() == "ZeRO 0, mbs 1 x gas 1"


def test_alternating_schedule() -> None:
    assert alternating_schedule(["a", "b"], 3) == ["a", "b", "a", "b", "a", "b"]
    assert alternating_schedule(["a"], 2) == ["a", "a"]
    assert alternating_schedule(["a", "b"], 0) == []
    with pytest.raises(ValueError):
        alternating_schedule(["a"], -1)


def test_measure_alternately_runs_in_schedule_order(tmp_path: pathlib.Path) -> None:
    seen: list[tuple[str, int, pathlib.Path]] = []
    configs = {NATIVE: tmp_path / "n.json", OURS: tmp_path / "o.json"}

    def run_one(tool: str, order: int, path: pathlib.Path) -> Measurement:
        seen.append((tool, order, path))
        return Measurement(tool, order, 10.0 + order, 1.0)

    reported: list[int] = []
    done = measure_alternately(configs, 2, run_one, lambda m: reported.append(m.order))
    assert [(t, o) for t, o, _ in seen] == [(NATIVE, 0), (OURS, 1), (NATIVE, 2), (OURS, 3)]
    assert all(path == configs[tool] for tool, _, path in seen)
    assert reported == [0, 1, 2, 3] and [m.samples_per_s for m in done] == [10, 11, 12, 13]
    only_ours = measure_alternately({OURS: configs[OURS]}, 3, run_one)
    assert {m.tool for m in only_ours} == {OURS} and len(only_ours) == 3


def test_measurement_from_timing_json() -> None:
    timing = {"samples_per_second": 42.5, "step_seconds": [0.5, 0.25]}
    good = measurement_from(NATIVE, 3, 9.0, timing, None)
    assert good.samples_per_s == 42.5 and good.step_seconds == (0.5, 0.25) and good.error is None
    failed = measurement_from(OURS, 4, 9.0, timing, "exit code 1")
    assert failed.samples_per_s is None and failed.error == "exit code 1"
    assert measurement_from(OURS, 4, 9.0, None, None).error == "no timing written"


def run_record(tool: str, wall_s: float, metric: float | None) -> TunerRun:
    pick = Pick(1, 16, 1, {"reduce_bucket_size": 5e8})
    return TunerRun(
        tool=tool,
        command=("x",),
        wall_s=wall_s,
        exit_code=0,
        timed_out=False,
        trials=7,
        outcomes={"ok": 6, "oom": 1},
        pick=pick,
        metric=metric,
        ds_config={"train_micro_batch_size_per_gpu": 16},
        notes=("a note",),
    )


def make_case(values: Mapping[str, list[float | None]]) -> CaseResult:
    measurements = []
    for order in range(max(len(v) for v in values.values())):
        for tool in (NATIVE, OURS):
            if order < len(values[tool]):
                value = values[tool][order]
                error = None if value is not None else "failed"
                measurements.append(Measurement(tool, len(measurements), value, 1.0, (), error))
    return CaseResult(
        model=ModelCase("gpt", "gpt", {"n_layer": 4}, "GPT"),
        config=SAME_CAP,
        native_cap=32,
        ours_cap=32,
        runs={NATIVE: run_record(NATIVE, 200.0, 90.0), OURS: run_record(OURS, 100.0, None)},
        measurements=tuple(measurements),
    )


def test_case_medians_and_ratios_ignore_failed_measurements() -> None:
    case = make_case({NATIVE: [100.0, 300.0, 200.0], OURS: [250.0, None, 150.0]})
    assert case.median(NATIVE) == 200.0
    assert case.median(OURS) == 200.0  # median of 250 and 150
    assert case.throughput_ratio == 1.0
    assert case.wall_ratio == 0.5
    failed = make_case({NATIVE: [None], OURS: [10.0]})
    assert failed.median(NATIVE) is None and failed.throughput_ratio is None


def test_records_survive_json() -> None:
    run = run_record(OURS, 12.5, 3.0)
    assert TunerRun.from_json(json.loads(json.dumps(run.to_json()))) == run
    measurement = Measurement(NATIVE, 2, 5.0, 3.0, (0.1, 0.2), None)
    assert Measurement.from_json(json.loads(json.dumps(measurement.to_json()))) == measurement


def context() -> ReportContext:
    machine = {"cpu": "Test CPU", "cores": 2, "memory_gib": 23.5, "load_average": [1.0, 2.0, 3.0]}
    return ReportContext(
        command="python -m benchmarks.native_e2e --quick",
        started="2026-12-02T00:00:00+00:00",
        machine=machine,
        versions={"deepspeed": "0.19.8"},
        settings={"method": "model"},
        phases={"environment": 3.0, "gpt / same-cap": 125.0},
        notes=("general note",),
    )


def test_report_shows_every_number() -> None:
    case = make_case({NATIVE: [100.0, 120.0, 110.0], OURS: [150.0, 165.0, 160.0]})
    text = markdown([case], context())
    assert "python -m benchmarks.native_e2e --quick" in text and "Test CPU" in text
    assert f"{160.0 / 110.0:.3f}" in text  # throughput ours/native
    assert "0.500" in text  # wall time ours/native
    assert "3 min 20 s" in text and "1 min 40 s" in text  # both tuners' wall times
    assert "ZeRO 1, mbs 16 x gas 1, reduce_bucket_size=500000000.0" in text
    assert "100.0, 120.0, 110.0" in text and "7 (ok 6, oom 1)" in text
    assert "- general note" in text and "gpt/same-cap/ours: a note" in text
    data = json.loads(json.dumps(report_json([case], context())))
    (entry,) = data["cases"]
    assert entry["median_samples_per_s"] == {NATIVE: 110.0, OURS: 160.0}
    assert entry["throughput_ratio_ours_over_native"] == pytest.approx(160.0 / 110.0)
    assert entry["wall_ratio_ours_over_native"] == 0.5
    assert len(entry["measurements"]) == 6 and data["phases_s"]["gpt / same-cap"] == 125.0


def test_dims_round_trip_and_errors() -> None:
    dims = {"width": 256, "depth": 2}
    assert parse_dims(format_dims(dims)) == dims
    assert format_dims(dims) == "depth=2,width=256"
    for bad in ("width", "width=x", "=3"):
        with pytest.raises(ValueError):
            parse_dims(bad)


def test_models_train_on_their_batches() -> None:
    gpt_dims = {"n_layer": 1, "n_head": 2, "d_model": 16, "seq_len": 8, "vocab_size": 32}
    gpt = build_model("gpt", gpt_dims)
    inputs, targets = make_batch("gpt", gpt_dims, 3, micro_step=5, rank=0, device="cpu")
    assert inputs.shape == (3, 8) and targets.shape == (3, 8)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])  # next-token targets
    again, _ = make_batch("gpt", gpt_dims, 3, micro_step=5, rank=0, device="cpu")
    other, _ = make_batch("gpt", gpt_dims, 3, micro_step=6, rank=0, device="cpu")
    assert torch.equal(inputs, again) and not torch.equal(inputs, other)
    assert gpt(inputs, targets).dim() == 0
    mlp_dims = {"in_dim": 6, "width": 10, "depth": 3, "classes": 4}
    mlp = build_model("mlp", mlp_dims)
    assert num_params(mlp) == 6 * 10 + 10 + 2 * (10 * 10 + 10) + 10 * 4 + 4
    features, labels = make_batch("mlp", mlp_dims, 5, micro_step=0, rank=1, device="cpu")
    assert features.shape == (5, 6) and labels.shape == (5,) and int(labels.max()) < 4
    mlp(features, labels).backward()
    with pytest.raises(ValueError, match="needs --dims"):
        build_model("mlp", {"in_dim": 6})


def test_full_gpt_is_the_briefs_size() -> None:
    model = build_model("gpt", native_e2e.MODELS_FULL["gpt"].dims)
    assert 7.3e6 < num_params(model) < 7.5e6


def test_plans_fill_in_quick_and_full_defaults() -> None:
    full = native_e2e.plan_from_args(native_e2e.parse_args([]))
    assert full.cap == 32 and full.repeats == 3 and full.case.measure.timed_steps == 10
    assert full.case.stages == (0, 1, 2, 3) and full.method == "model"
    assert [m.name for m in full.models] == ["gpt", "mlp"]
    quick = native_e2e.plan_from_args(native_e2e.parse_args(["--quick", "--models", "gpt"]))
    assert quick.cap == 8 and quick.case.measure.timed_steps == 3
    assert quick.models == (native_e2e.MODELS_QUICK["gpt"],)
    assert quick.out_dir == full.out_dir / "quick"
    with pytest.raises(SystemExit):
        native_e2e.plan_from_args(native_e2e.parse_args(["--repeats", "0"]))


def test_our_cap_falls_back_when_dsat_lacks_the_flag() -> None:
    assert native_e2e.ours_cap_for(SAME_CAP, 32, dsat_has_cap=True) == 32
    assert native_e2e.ours_cap_for(SAME_CAP, 32, dsat_has_cap=False) is None
    assert native_e2e.ours_cap_for("defaults", 32, dsat_has_cap=True) is None


def test_allreduce_buffers_of_given_ports_are_removed(tmp_path: pathlib.Path) -> None:
    names = [
        "deepspeed_allreduce_buffer_0_127.0.0.1_29500_0",
        "deepspeed_allreduce_buffer_0_127.0.0.1_29501_0",
        "deepspeed_allreduce_buffer_0_127.0.0.1_295010_0",
        "other_29500_0",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert remove_allreduce_buffers(range(29500, 29502), root=tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


def test_durations_read_like_a_person_writes_them() -> None:
    assert format_duration(38.4) == "38 s"
    assert format_duration(251) == "4 min 11 s"
    assert format_duration(3725) == "1 h 02 min"


def test_recorded_measurements_are_reused_only_for_the_same_picks(tmp_path: pathlib.Path) -> None:
    """A re-run of ours with --reuse picked ZeRO 0 mbs 32; the report showed the earlier
    pick's (mbs 6) measurements as its own."""
    from benchmarks.native_e2e_steps import _measured_these_picks

    runs = {NATIVE: run_record(NATIVE, 10.0, 5.0), OURS: run_record(OURS, 5.0, 5.0)}
    for tool, run in runs.items():
        (tmp_path / f"{tool}_ds_config.json").write_text(json.dumps(run.ds_config))
    assert _measured_these_picks(tmp_path, runs)
    repicked = attrs.evolve(runs[OURS], ds_config={"train_micro_batch_size_per_gpu": 32})
    assert not _measured_these_picks(tmp_path, {**runs, OURS: repicked})
