"""The expconf validator (``expconf.py``) against Determined 0.37's own schema test cases.

``test_schema_case`` runs every case of the schemas' ``test_cases/*.yaml`` the way
Determined's Go test does: ``sane_as``/``complete_as`` must validate, and for
``sanity_errors``/``completeness_errors`` validation must fail with, for each expected
pattern, a message that the pattern matches (``re.search``, as Go's ``MatchString``).
Our messages use the master's ``<config>.path: message`` form and the master's wording
for Determined's own keywords, so the patterns are matched as written; where a pattern
is about a standard draft-07 keyword it pins only the path (``<config>.batches: .*``),
since jsonschema words those messages differently from the master's Go library.

Default-filling (``default_as``/``defaulted``) and merging (``merge_as``/``merged``) are
not validation and are not re-implemented; ``test_master_filled_and_merged_configs_are_sane``
checks instead that what the master produces by them passes our sanity check. The
validation that Go's test does for merge cases (both inputs sane as ``merge_as``) runs in
``test_schema_case``.

The schema directory is found by ``find_expconf_dir()``; without it those tests skip, and
under ``CI=true`` fail (``tests/ci_support.py``).
The keyword unit tests at the end use tiny schemas in ``tmp_path`` and always run.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from expconf import (
    EXPCONF_DIR_ENV,
    EXPERIMENT_SCHEMA_URL,
    NO_EXPCONF_REASON,
    SEARCHER_SCHEMA_URL,
    ExpconfProblem,
    ExpconfSchemaError,
    ExpconfValidator,
    default_validator,
    find_expconf_dir,
    render_path,
    schema_url,
)

REPO = pathlib.Path(__file__).resolve().parents[2]

_VALIDATION_KEYS = ("sane_as", "complete_as", "sanity_errors", "completeness_errors")
_RESULT_KEYS = ("default_as", "defaulted", "merge_src", "merged")
_KNOWN_KEYS = {"name", "case", "merge_as", *_VALIDATION_KEYS, *_RESULT_KEYS}

# Schemas whose test cases cover what we generate; the directory must have cases for each.
_COVERED_URLS = [
    schema_url(name)
    for name in (
        "experiment",
        "searcher",
        "searcher-custom",
        "searcher-single",
        "searcher-grid",
        "searcher-random",
        "hyperparameter",
        "hyperparameter-int",
        "length",
        "check-positive-length",
        "check-grid-hyperparameter",
        "checkpoint-storage",
        "shared-fs",
        "environment",
        "resources",
        "security",
        "test-union",
    )
]


def _load_cases() -> list[tuple[str, dict[str, Any]]]:
    root = find_expconf_dir()
    if root is None:
        return []
    cases: list[tuple[str, dict[str, Any]]] = []
    for path in sorted((root / "test_cases").glob("*.yaml")):
        for case in yaml.safe_load(path.read_text(encoding="utf-8")) or []:
            cases.append((path.name, case))
    return cases


CASES = _load_cases()


def _case_params(cases: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    if not cases:
        return [pytest.param(None, id="no-expconf-dir", marks=pytest.mark.skip(NO_EXPCONF_REASON))]
    return [pytest.param(case, id=f"{file}::{case['name']}") for file, case in cases]


@pytest.fixture(scope="module")
def validator() -> ExpconfValidator:
    found = default_validator()
    if found is None:
        pytest.skip(NO_EXPCONF_REASON)
    return found


def _pattern_failures(kind: str, url: str, patterns: list[str], errors: list[str]) -> list[str]:
    if not errors:
        return [f"{kind} {url}: expected errors {patterns}, got none"]
    return [
        f"{kind} {url}: no error matches {pattern!r} in {errors}"
        for pattern in patterns
        if not any(re.search(pattern, message) for message in errors)
    ]


@pytest.mark.parametrize("case", _case_params(CASES))
def test_schema_case(validator: ExpconfValidator, case: dict[str, Any]) -> None:
    unknown = set(case) - _KNOWN_KEYS
    assert not unknown, f"test case keys this test does not understand: {sorted(unknown)}"
    assert any(key in case for key in (*_VALIDATION_KEYS, "merge_as")), "nothing to check"
    config = case.get("case")
    failures: list[str] = []
    for url in case.get("sane_as") or []:
        failures += [f"sane_as {url}: {e}" for e in validator.sanity_errors(config, url)]
    for url in case.get("complete_as") or []:
        failures += [f"complete_as {url}: {e}" for e in validator.completeness_errors(config, url)]
    for url, patterns in (case.get("sanity_errors") or {}).items():
        errors = validator.sanity_errors(config, url)
        failures += _pattern_failures("sanity_errors", url, patterns, errors)
    for url, patterns in (case.get("completeness_errors") or {}).items():
        errors = validator.completeness_errors(config, url)
        failures += _pattern_failures("completeness_errors", url, patterns, errors)
    if "merge_as" in case:
        for label, value in (("case", config), ("merge_src", case.get("merge_src"))):
            errors = validator.sanity_errors(value, case["merge_as"])
            failures += [f"merge_as {case['merge_as']} ({label}): {e}" for e in errors]
    assert not failures, "\n".join(failures)


def _wildcards(value: Any, path: tuple[str | int, ...] = ()) -> set[str]:
    """Rendered paths of ``'*'`` in an expected config: "any value" in Determined's cases
    (e.g. the Go struct a ``pod_spec`` becomes)."""
    if value == "*":
        return {render_path(path)}
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in _wildcards(v, (*path, k))}
    if isinstance(value, list):
        return {p for i, v in enumerate(value) for p in _wildcards(v, (*path, i))}
    return set()


_RESULT_CASES = [(f, c) for f, c in CASES if any(key in c for key in ("defaulted", "merged"))]


@pytest.mark.parametrize("case", _case_params(_RESULT_CASES))
def test_master_filled_and_merged_configs_are_sane(
    validator: ExpconfValidator, case: dict[str, Any]
) -> None:
    """What the master makes of a config, by filling defaults (``defaulted``) or merging
    (``merged``), must still pass the sanity check for its schema: our validator must not
    refuse what a master itself produces (explicit nulls, filled-in unions, ...).
    Filling and merging themselves are not validation and are not re-implemented here."""
    result, url = (
        (case["defaulted"], case["default_as"])
        if "defaulted" in case
        else (case["merged"], case["merge_as"])
    )
    wildcards = _wildcards(result)
    problems = [p for p in validator.problems(result, url) if p.path not in wildcards]
    assert problems == [], [str(p) for p in problems]


def test_test_cases_cover_generated_sections() -> None:
    if not CASES:
        pytest.skip(NO_EXPCONF_REASON)
    used: set[str] = set()
    for _, case in CASES:
        used.update(case.get("sane_as") or [], case.get("complete_as") or [])
        used.update(case.get("sanity_errors") or {}, case.get("completeness_errors") or {})
    assert sorted(set(_COVERED_URLS) - used) == []
    assert len(CASES) >= 100, f"only {len(CASES)} test cases: is test_cases/ complete?"


# --- configs we generate ------------------------------------------------------------

_OVERWRITES = {
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 2,
    "train_batch_size": 16,
    "zero_optimization": {"stage": 2, "overlap_comm": True},
    "autotuning": {
        "enabled": True,
        "start_profile_step": 3,
        "end_profile_step": 5,
        "metric_path": "autotuning_metric.json",
    },
}


def _custom_experiment() -> dict[str, Any]:
    """A DSAT search experiment: a ``custom`` searcher whose trials the plugin creates."""
    return {
        "name": "dsat-gpt-1.3b (binary search)",
        "entrypoint": ["python3", "-m", "determined.launch.deepspeed", "python3", "train.py"],
        "searcher": {
            "name": "custom",
            "metric": "throughput",
            "smaller_is_better": False,
            "unit": "batches",
        },
        "hyperparameters": {
            "deepspeed_config": "ds_config.json",
            "n_layer": 24,
            "overwrite_deepspeed_args": _OVERWRITES,
            "_use_dsat_mode": True,
            "lr": {"type": "const", "val": 3e-4},
        },
        "resources": {"slots_per_trial": 2, "resource_pool": "gpu"},
        "max_restarts": 0,
        "environment": {
            "image": {"cuda": "determinedai/pytorch-ngc:0.37.0"},
            "environment_variables": ["NCCL_DEBUG=WARN"],
        },
        "checkpoint_storage": {"type": "shared_fs", "host_path": "/tmp", "storage_path": "ckpt"},
        "labels": ["dsat"],
        "workspace": "",
        "project": "",
    }


def _single_experiment() -> dict[str, Any]:
    """A trial (or the final full run) as a ``single`` searcher experiment."""
    return {
        "name": "dsat-gpt-1.3b trial 7",
        "entrypoint": "python3 -m determined.launch.deepspeed python3 train.py",
        "searcher": {
            "name": "single",
            "metric": "throughput",
            "smaller_is_better": False,
            "max_length": {"batches": 100},
        },
        "hyperparameters": {
            "deepspeed_config": "ds_config.json",
            "overwrite_deepspeed_args": {"zero_optimization": {"stage": 2}, **_OVERWRITES},
            "layers": [1, {"inner": [2, 3]}],
            "maybe": None,
        },
        "resources": {"slots_per_trial": 2},
        "min_validation_period": {"batches": 100},
        "max_restarts": 0,
    }


@pytest.mark.parametrize("make", [_custom_experiment, _single_experiment])
def test_generated_experiments_are_sane(
    validator: ExpconfValidator, make: Callable[[], dict[str, Any]]
) -> None:
    config = make()
    assert validator.sanity_errors(config) == []
    # The master checks completeness only after filling in its defaults (environment
    # images, seed, cluster checkpoint storage...), which this validator does not do; the
    # sections that get no defaults from the master must already be complete.
    assert validator.completeness_errors(config["searcher"], SEARCHER_SCHEMA_URL) == []
    if "checkpoint_storage" in config:
        storage = config["checkpoint_storage"]
        assert validator.completeness_errors(storage, schema_url("checkpoint-storage")) == []


def test_nested_hyperparameters_are_plain_values(validator: ExpconfValidator) -> None:
    """A dict hyperparameter without ``type`` is a nest of hyperparameters, leaves are consts."""
    nested = {"overwrite_deepspeed_args": {"zero_optimization": {"stage": 2}}}
    assert validator.sanity_errors(nested, schema_url("hyperparameters")) == []
    # ...so a nested dict with a "type" key (DeepSpeed's optimizer block) must be wrapped.
    optimizer = {"optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}}
    errors = validator.sanity_errors({"ds": optimizer}, schema_url("hyperparameters"))
    assert errors == [
        '<config>.ds.optimizer: if a hyperparameter object\'s ["type"] is set, it must be '
        'one of "int", "double", "log", const", or "categorical"'
    ]
    wrapped = {"ds": {"type": "const", "val": optimizer}}
    assert validator.sanity_errors(wrapped, schema_url("hyperparameters")) == []


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(REPO).as_posix() for p in (REPO / "examples").glob("*/*.yaml"))
)
def test_example_experiment_configs_are_sane(validator: ExpconfValidator, path: str) -> None:
    config = yaml.safe_load((REPO / path).read_text(encoding="utf-8"))
    assert validator.sanity_errors(config) == []


_BROKEN = {
    "metric-not-a-string": (
        {"searcher": {"name": "custom", "metric": 5}},
        "<config>.searcher.metric: 5 is not of type 'string', 'null'",
    ),
    "int-hparam-without-maxval": (
        {"hyperparameters": {"x": {"type": "int", "minval": 1}}},
        "<config>.hyperparameters.x: 'maxval' is a required property",
    ),
    "int-hparam-empty-range": (
        {"hyperparameters": {"x": {"type": "int", "minval": 3, "maxval": 3, "count": 1}}},
        "<config>.hyperparameters.x: minval must be less than maxval",
    ),
    "entrypoint-not-a-string": (
        {"entrypoint": 7},
        "<config>.entrypoint: 7 is not of type 'string', 'array', 'null'",
    ),
    "unknown-searcher": (
        {"searcher": {"name": "dsat", "metric": "loss"}},
        "<config>.searcher: is not an object where object[\"name\"] is one of 'single', "
        "'random', 'grid', 'custom', or 'adaptive_asha'",
    ),
    "single-with-custom-only-field": (
        {"searcher": {"name": "single", "metric": "loss", "unit": "batches"}},
        "<config>.searcher: Additional properties are not allowed ('unit' was unexpected)",
    ),
    "zero-length": (
        {"searcher": {"name": "single", "metric": "loss", "max_length": {"batches": 0}}},
        "<config>.searcher.max_length.batches: 0 is less than the minimum of 1",
    ),
    "unknown-length-unit": (
        {"searcher": {"name": "single", "metric": "loss", "max_length": {"steps": 9}}},
        '<config>.searcher.max_length: a length object must have one attribute named "batches", '
        '"records", or "epochs"',
    ),
    "negative-slots": (
        {"resources": {"slots_per_trial": -1}},
        "<config>.resources.slots_per_trial: -1 is less than the minimum of 0",
    ),
    "unknown-top-level-key": (
        {"searcher_name": "custom"},
        "<config>: Additional properties are not allowed ('searcher_name' was unexpected)",
    ),
    "relative-bind-mount": (
        {"bind_mounts": [{"host_path": "data", "container_path": "/data"}]},
        "<config>.bind_mounts[0].host_path: host_path must be an absolute path",
    ),
}


@pytest.mark.parametrize(("change", "expected"), list(_BROKEN.values()), ids=list(_BROKEN))
def test_broken_configs_name_the_path(
    validator: ExpconfValidator, change: dict[str, Any], expected: str
) -> None:
    config = {**_single_experiment(), **change}
    assert expected in validator.sanity_errors(config)
    with pytest.raises(AssertionError, match=re.escape(expected)):
        validator.assert_sane(config)


def test_problems_are_structured(validator: ExpconfValidator) -> None:
    config = {**_single_experiment(), "entrypoint": 7}
    assert validator.problems(config) == [
        ExpconfProblem("<config>.entrypoint", "7 is not of type 'string', 'array', 'null'", "type")
    ]
    with pytest.raises(KeyError, match="no expconf schema"):
        validator.sanity_errors({}, schema_url("no-such-schema"))


def test_configs_must_be_json(validator: ExpconfValidator) -> None:
    assert validator.sanity_errors({"max_restarts": float("nan")}) == [
        "<config>: is not JSON-serializable: Out of range float values are not JSON compliant"
    ]
    # Tuples travel as JSON arrays.
    assert validator.sanity_errors({"labels": ("a", "b")}) == []


def test_completeness_needs_eventually_required(validator: ExpconfValidator) -> None:
    searcher = {"name": "single", "metric": None}
    assert validator.sanity_errors(searcher, SEARCHER_SCHEMA_URL) == []
    assert validator.completeness_errors(searcher, SEARCHER_SCHEMA_URL) == [
        "<config>: max_length is a required property",
        "<config>: metric is a required property",
    ]
    with pytest.raises(AssertionError, match="is incomplete"):
        validator.assert_complete(searcher, SEARCHER_SCHEMA_URL)


# --- keyword semantics on small schemas (no schema directory needed) -------------------

_PREFIX = "http://determined.ai/schemas/expconf/v0/"


def _schema_dir(tmp_path: pathlib.Path, **schemas: dict[str, Any]) -> ExpconfValidator:
    """A validator for ``schemas`` (name -> schema); ``experiment`` defaults to ``{}``."""
    folder = tmp_path / "expconf"
    folder.mkdir()
    for name, schema in {"experiment": {}, **schemas}.items():
        body = {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "$id": _PREFIX + f"{name}.json",
        }
        (folder / f"{name}.json").write_text(json.dumps({**body, **schema}), encoding="utf-8")
    return ExpconfValidator(tmp_path)


def test_union_reports_the_keyed_item_or_the_default(tmp_path: pathlib.Path) -> None:
    union = {
        "defaultMessage": "needs kind a or b",
        "items": [
            {"unionKey": "const:kind=a", "required": ["kind", "a"]},
            {"unionKey": "const:kind=b", "required": ["kind", "b"]},
            {"unionKey": "never", "properties": {"both": {"const": True}}, "required": ["both"]},
        ],
    }
    validator = _schema_dir(tmp_path, experiment={"union": union})
    assert validator.sanity_errors({"kind": "a", "a": 1}) == []
    assert validator.sanity_errors({"kind": "b"}) == ["<config>: 'b' is a required property"]
    assert validator.sanity_errors({"kind": "c"}) == ["<config>: needs kind a or b"]
    # Two alternatives matching is a schema bug; the master reports it too.
    assert validator.sanity_errors({"kind": "a", "a": 1, "both": True}) == [
        "<config>: matches 2 union alternatives (const:kind=a, never), exactly one must match"
    ]


def test_union_keys(tmp_path: pathlib.Path) -> None:
    items = [
        {"unionKey": "singleproperty:n", "type": "object", "required": ["n"], "maxProperties": 1},
        {"unionKey": "type:array", "type": "array", "maxItems": 1},
        {"unionKey": "not:hasattr:n", "type": "object", "required": ["m"]},
        {"unionKey": "hasattr:n", "type": "object", "required": ["n", "o"]},
    ]
    validator = _schema_dir(tmp_path, experiment={"union": {"items": items}})
    assert validator.sanity_errors({"n": 1}) == []
    assert validator.sanity_errors([1, 2]) == ["<config>: [1, 2] is too long"]
    assert validator.sanity_errors({}) == ["<config>: 'm' is a required property"]
    assert validator.sanity_errors({"n": 1, "p": 2}) == ["<config>: 'o' is a required property"]
    assert validator.sanity_errors(5) == ["<config>: 5 is not of type 'object'"]


def test_unknown_union_key_is_a_schema_error(tmp_path: pathlib.Path) -> None:
    union = {"items": [{"unionKey": "regex:.*", "type": "object"}]}
    with pytest.raises(ExpconfSchemaError, match="unknown unionKey 'regex:.\\*'"):
        _schema_dir(tmp_path, experiment={"union": union})


def test_optional_ref_allows_null(tmp_path: pathlib.Path) -> None:
    validator = _schema_dir(
        tmp_path,
        experiment={"properties": {"sub": {"optionalRef": _PREFIX + "sub.json"}}},
        sub={"type": "object", "required": ["x"]},
    )
    assert validator.sanity_errors({"sub": None}) == []
    assert validator.sanity_errors({"sub": {}}) == ["<config>.sub: 'x' is a required property"]


def test_dangling_reference_is_a_schema_error(tmp_path: pathlib.Path) -> None:
    schema = {"properties": {"sub": {"optionalRef": _PREFIX + "missing.json"}}}
    with pytest.raises(ExpconfSchemaError, match="unknown schema"):
        _schema_dir(tmp_path, experiment=schema)


def test_checks_disallow_and_compare(tmp_path: pathlib.Path) -> None:
    experiment = {
        "checks": {"lo must not be 13": {"properties": {"lo": {"not": {"const": 13}}}}},
        "disallowProperties": {"old": "old is gone, use new"},
        "compareProperties": {"type": "a<=b", "a": "lo", "b": "range.hi"},
    }
    validator = _schema_dir(tmp_path, experiment=experiment)
    assert validator.sanity_errors({"lo": 2, "range": {"hi": 2}}) == []
    assert validator.sanity_errors({"lo": 3, "range": {"hi": 2}, "old": 1}) == [
        "<config>: lo must be less than range.hi",
        "<config>: old is gone, use new",
    ]
    assert validator.sanity_errors({"lo": 13, "range": {"hi": "x"}}) == [
        "<config>: lo must not be 13"
    ]


def test_subdir_comparison(tmp_path: pathlib.Path) -> None:
    compare = {"type": "a_is_subdir_of_b", "a": "a", "b": "b"}
    validator = _schema_dir(tmp_path, experiment={"compareProperties": compare})
    for a in ("x", "./x/..", "/base/x", "//base/x/../y"):
        assert validator.sanity_errors({"a": a, "b": "/base"}) == [], a
    for a in ("..", "x/../..", "/elsewhere", "/base/../x"):
        assert validator.sanity_errors({"a": a, "b": "/base"}) == [
            "<config>: a must be a subdirectory of b"
        ], a


def test_conditional_when_and_unless(tmp_path: pathlib.Path) -> None:
    when = {"when": {"required": ["gpu"]}, "enforce": {"required": ["image"]}}
    unless = {"unless": {"required": ["name"]}, "enforce": {"required": ["id"]}}
    validator = _schema_dir(
        tmp_path, experiment={"allOf": [{"conditional": when}, {"conditional": unless}]}
    )
    assert validator.sanity_errors({"name": "n"}) == []
    assert validator.sanity_errors({"name": "n", "gpu": 1}) == [
        "<config>: 'image' is a required property"
    ]
    assert validator.sanity_errors({}) == ["<config>: 'id' is a required property"]


def test_eventually_keywords_only_count_for_completeness(tmp_path: pathlib.Path) -> None:
    experiment = {
        "eventuallyRequired": ["name"],
        "eventually": {
            "checks": {"name must be short": {"properties": {"name": {"maxLength": 3}}}}
        },
    }
    validator = _schema_dir(tmp_path, experiment=experiment)
    assert validator.sanity_errors({"name": "long name"}) == []
    assert validator.completeness_errors({"name": None}) == [
        "<config>: name is a required property"
    ]
    assert validator.completeness_errors({"name": "long name"}) == ["<config>: name must be short"]


def test_find_expconf_dir_prefers_the_environment(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _schema_dir(tmp_path)
    monkeypatch.setenv(EXPCONF_DIR_ENV, str(tmp_path))
    assert find_expconf_dir() == tmp_path
    monkeypatch.setenv(EXPCONF_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ExpconfSchemaError, match=EXPCONF_DIR_ENV):
        find_expconf_dir()


def test_experiment_schema_is_required(tmp_path: pathlib.Path) -> None:
    (tmp_path / "expconf").mkdir()
    with pytest.raises(ExpconfSchemaError, match=re.escape(EXPERIMENT_SCHEMA_URL)):
        ExpconfValidator(tmp_path)
