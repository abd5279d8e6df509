"""Validate experiment configs the way a Determined 0.37 master does.

A 0.37 master checks every submitted experiment config against its ``expconf`` JSON
schemas (draft-07 plus a few keywords of Determined's own), and the ``determined``
Python package no longer ships that check. This module re-implements it on top of
``jsonschema``, so tests can prove that the configs we generate would be accepted.

The schemas are data, not code: ``find_expconf_dir()`` locates a copy of Determined's
``schemas/expconf/v0`` (as ``expconf/``) and ``schemas/test_cases/v0`` (as
``test_cases/``), and ``ExpconfValidator`` loads them.

Like the master, validation comes in two strengths:

- *sanity* (``sanity_errors``): what a submitted config must pass. ``eventuallyRequired``
  and ``eventually`` are inert, because the master fills in defaults (cluster
  checkpoint storage, a generated name, a random seed...) before it asks for more.
- *completeness* (``completeness_errors``): what the config must pass once defaults are
  filled in. ``eventuallyRequired`` behaves like ``required`` (a ``null`` value counts
  as missing) and the ``eventually`` subschema is enforced as well.

Determined's keywords, as the master implements them:

- ``union``: ``{"items": [...], "defaultMessage": ...}``; exactly one item must
  validate. When none does, the errors of the first failing item whose ``unionKey``
  matches the instance are reported (else ``defaultMessage``). Keys: ``always``,
  ``never``, ``not:KEY``, ``const:NAME=VALUE``, ``singleproperty:NAME``,
  ``type:array``/``type:object`` and ``hasattr:NAME``.
- ``optionalRef``: a ``$ref`` that also accepts ``null``.
- ``checks``: ``{message: subschema}``; when the subschema fails, the message is the error.
- ``compareProperties``: ``{"type", "a", "b"}`` with dotted property paths ``a``/``b``
  and type ``a<b``, ``a<=b`` or ``a_is_subdir_of_b``; skipped when either value is
  missing or of the wrong type (other keywords report those).
- ``conditional``: ``{"when"|"unless": schema, "enforce": schema}``.
- ``disallowProperties``: ``{property: message}``; each listed property must be absent.

Errors are rendered as the master renders them, ``<config>.a.b[0]: message``, where the
path is the location of the failing value in the config. Messages of Determined's own
keywords are the master's, word for word; those of standard draft-07 keywords are
``jsonschema``'s wording (the master's Go library words them differently).

Known differences from the master, none of which the schemas' test cases exercise:
``pattern`` uses Python's ``re`` (whose ``$`` also matches before a final newline)
rather than Go's RE2, and messages of standard keywords are worded differently.

Typical use in a test::

    validator = default_validator()
    if validator is None:
        pytest.skip(NO_EXPCONF_REASON)
    assert validator.sanity_errors(config) == []
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import jsonschema  # type: ignore[import-untyped]
import referencing
import referencing.jsonschema

__all__ = [
    "EXPCONF_DIR_ENV",
    "EXPERIMENT_SCHEMA_URL",
    "NO_EXPCONF_REASON",
    "SCHEMA_URL_PREFIX",
    "SEARCHER_SCHEMA_URL",
    "ExpconfProblem",
    "ExpconfSchemaError",
    "ExpconfValidator",
    "default_validator",
    "find_expconf_dir",
    "render_path",
    "schema_url",
]

EXPCONF_DIR_ENV: Final = "DSAT_EXPCONF_DIR"
"""Environment variable naming the schema directory (it wins over the default places)."""

SHARED_DIR_NAME: Final = "determined-0.37-expconf"
SCHEMA_URL_PREFIX: Final = "http://determined.ai/schemas/expconf/v0/"
EXPERIMENT_SCHEMA_URL: Final = SCHEMA_URL_PREFIX + "experiment.json"
SEARCHER_SCHEMA_URL: Final = SCHEMA_URL_PREFIX + "searcher.json"

NO_EXPCONF_REASON: Final = (
    f"Determined 0.37 expconf schemas not found: set {EXPCONF_DIR_ENV} or put "
    f"{SHARED_DIR_NAME}/ under shared/ beside the checkout (CI has it there)"
)

_ROOT: Final = "<config>"
_DRAFT7: Final = "http://json-schema.org/draft-07/schema#"

Json = Any
"""A decoded JSON value: dict, list, str, int, float, bool or None."""

KeywordFn = Callable[[Any, Any, Json, Json], Iterator[Any]]
"""A ``jsonschema`` keyword implementation: (validator, value, instance, schema) -> errors."""


class ExpconfSchemaError(ValueError):
    """The schema directory is missing, unreadable or uses a keyword form we do not know."""


@dataclasses.dataclass(frozen=True, order=True)
class ExpconfProblem:
    """One validation error: where in the config, what is wrong, which keyword said so."""

    path: str
    """Location of the failing value, rendered like the master: ``<config>.a.b[0]``."""
    message: str
    """Human-readable reason."""
    keyword: str
    """The schema keyword that failed, e.g. ``type``, ``required``, ``union``, ``checks``."""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def schema_url(name: str) -> str:
    """The ``$id`` of an expconf schema file, e.g. ``schema_url("searcher-custom")``."""
    return SCHEMA_URL_PREFIX + (name if name.endswith(".json") else f"{name}.json")


def _is_expconf_root(path: pathlib.Path) -> bool:
    return (path / "expconf" / "experiment.json").is_file()


def find_expconf_dir() -> pathlib.Path | None:
    """Locate the Determined 0.37 schema directory (the one holding ``expconf/``).

    Looks at ``$DSAT_EXPCONF_DIR`` first, then ``<repo>/../shared/determined-0.37-expconf``
    and ``<repo>/shared/determined-0.37-expconf``, where ``<repo>`` is the checkout this
    file belongs to. Returns None when no default place has it. A ``$DSAT_EXPCONF_DIR``
    that does not hold the schemas raises ``ExpconfSchemaError``: a misconfigured
    override must not silently turn the config checks into skips.
    """
    override = os.environ.get(EXPCONF_DIR_ENV, "").strip()
    if override:
        path = pathlib.Path(override).expanduser()
        if not _is_expconf_root(path):
            raise ExpconfSchemaError(
                f"{EXPCONF_DIR_ENV}={override!r} does not contain expconf/experiment.json"
            )
        return path
    repo = pathlib.Path(__file__).resolve().parents[2]
    for candidate in (repo.parent / "shared" / SHARED_DIR_NAME, repo / "shared" / SHARED_DIR_NAME):
        if _is_expconf_root(candidate):
            return candidate
    return None


@functools.cache
def default_validator() -> ExpconfValidator | None:
    """A shared ``ExpconfValidator`` for ``find_expconf_dir()``, or None without schemas."""
    root = find_expconf_dir()
    return None if root is None else ExpconfValidator(root)


# --- unionKey ------------------------------------------------------------------------


@functools.cache
def _union_key(key: str) -> Callable[[Json], bool]:
    """Parse a ``unionKey`` into a predicate on the instance (raises on unknown forms)."""
    if key == "always":
        return lambda instance: True
    if key == "never":
        return lambda instance: False
    kind, colon, arg = key.partition(":")
    if not colon:
        raise ExpconfSchemaError(f"unknown unionKey {key!r}")
    if kind == "not":
        inner = _union_key(arg)
        return lambda instance: not inner(instance)
    if kind == "const":
        name, equals, value = arg.partition("=")
        if not equals:
            raise ExpconfSchemaError(f"unionKey {key!r} needs the form const:NAME=VALUE")
        return lambda instance: isinstance(instance, dict) and instance.get(name) == value
    if kind == "singleproperty":
        return lambda instance: isinstance(instance, dict) and list(instance) == [arg]
    if kind == "type" and arg == "array":
        return lambda instance: isinstance(instance, list)
    if kind == "type" and arg == "object":
        return lambda instance: isinstance(instance, dict)
    if kind == "hasattr":
        return lambda instance: isinstance(instance, dict) and arg in instance
    raise ExpconfSchemaError(f"unknown unionKey {key!r}")


# --- keyword implementations -----------------------------------------------------------


def _union(validator: Any, union: Json, instance: Json, schema: Json) -> Iterator[Any]:
    """Exactly one item validates; else report the first matching-key item's errors."""
    matched: list[str] = []
    selected: list[Any] | None = None
    for index, item in enumerate(union["items"]):
        errors = list(validator.descend(instance, item, schema_path=index))
        if not errors:
            matched.append(item["unionKey"])
        elif selected is None and _union_key(item["unionKey"])(instance):
            selected = errors
    if len(matched) == 1:
        return
    if matched:
        yield jsonschema.ValidationError(
            f"matches {len(matched)} union alternatives ({', '.join(matched)}), "
            "exactly one must match"
        )
    elif selected:
        yield from selected
    else:
        yield jsonschema.ValidationError(union.get("defaultMessage", "union failed to validate"))


def _optional_ref(validator: Any, ref: Json, instance: Json, schema: Json) -> Iterator[Any]:
    """``$ref`` to ``ref``, except that ``null`` is always accepted."""
    if instance is not None:
        yield from validator.descend(instance, {"$ref": ref})


def _checks(validator: Any, checks: Json, instance: Json, schema: Json) -> Iterator[Any]:
    """Each key is the message to report when its subschema fails."""
    for message, subschema in checks.items():
        if next(iter(validator.descend(instance, subschema)), None) is not None:
            yield jsonschema.ValidationError(message)


_MISSING: Final = object()


def _property_at(instance: Json, dotted: str) -> Json:
    """``instance["a"]["b"]`` for ``"a.b"``, or ``_MISSING`` when any step is absent."""
    value = instance
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _is_number(value: Json) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _clean_path(path: str) -> str:
    """Lexically clean a slash path like Go's ``filepath.Clean`` (``//a`` becomes ``/a``)."""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def _compare_properties(
    validator: Any, compare: Json, instance: Json, schema: Json
) -> Iterator[Any]:
    """Compare two properties of an object; wrongly typed or absent values are skipped."""
    a_name, b_name, kind = compare["a"], compare["b"], compare["type"]
    a, b = _property_at(instance, a_name), _property_at(instance, b_name)
    if kind in ("a<b", "a<=b"):
        if not (_is_number(a) and _is_number(b)):
            return
        # The master words both comparisons "must be less than".
        if a > b or (kind == "a<b" and a == b):
            yield jsonschema.ValidationError(f"{a_name} must be less than {b_name}")
    elif kind == "a_is_subdir_of_b":
        if not (isinstance(a, str) and isinstance(b, str)):
            return
        a_path, b_path = _clean_path(a), _clean_path(b)
        # Like the master: an absolute path needs b as a (string) prefix, a relative one
        # must not climb out.
        outside = (
            not a_path.startswith(b_path) if a_path.startswith("/") else a_path.startswith("..")
        )
        if outside:
            yield jsonschema.ValidationError(f"{a_name} must be a subdirectory of {b_name}")
    else:
        raise ExpconfSchemaError(f"unknown compareProperties type {kind!r}")


def _conditional(validator: Any, cond: Json, instance: Json, schema: Json) -> Iterator[Any]:
    """Enforce ``enforce`` when ``when`` validates, or when ``unless`` does not."""
    if "when" in cond:
        applies = next(iter(validator.descend(instance, cond["when"])), None) is None
    else:
        applies = next(iter(validator.descend(instance, cond["unless"])), None) is not None
    if applies:
        yield from validator.descend(instance, cond["enforce"], schema_path="enforce")


def _disallow_properties(
    validator: Any, disallowed: Json, instance: Json, schema: Json
) -> Iterator[Any]:
    """Each listed property must be absent; its value is the message when present."""
    if isinstance(instance, dict):
        for name, message in disallowed.items():
            if name in instance:
                yield jsonschema.ValidationError(message)


def _eventually_required(
    validator: Any, names: Json, instance: Json, schema: Json
) -> Iterator[Any]:
    """``required`` for complete configs, where ``null`` also counts as missing."""
    if isinstance(instance, dict):
        for name in names:
            if instance.get(name) is None:
                yield jsonschema.ValidationError(f"{name} is a required property")


def _eventually(validator: Any, subschema: Json, instance: Json, schema: Json) -> Iterator[Any]:
    """A subschema enforced only for complete configs."""
    yield from validator.descend(instance, subschema)


_SANITY_KEYWORDS: Final[Mapping[str, KeywordFn]] = {
    "union": _union,
    "optionalRef": _optional_ref,
    "checks": _checks,
    "compareProperties": _compare_properties,
    "conditional": _conditional,
    "disallowProperties": _disallow_properties,
}
_COMPLETENESS_KEYWORDS: Final[Mapping[str, KeywordFn]] = {
    **_SANITY_KEYWORDS,
    "eventuallyRequired": _eventually_required,
    "eventually": _eventually,
}

_SanityValidator = jsonschema.validators.extend(jsonschema.Draft7Validator, _SANITY_KEYWORDS)
_CompletenessValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator, _COMPLETENESS_KEYWORDS
)


# --- schema loading --------------------------------------------------------------------

_SCHEMA_VALUED: Final = (
    "additionalItems",
    "additionalProperties",
    "contains",
    "else",
    "eventually",
    "if",
    "not",
    "propertyNames",
    "then",
)
_SCHEMA_MAPS: Final = ("definitions", "dependencies", "patternProperties", "properties", "checks")
_SCHEMA_LISTS: Final = ("allOf", "anyOf", "oneOf")


def _subschemas(schema: Json) -> Iterator[Json]:
    """The direct subschemas of a schema, Determined's keywords included."""
    if not isinstance(schema, dict):
        return
    for keyword in _SCHEMA_VALUED:
        if keyword in schema:
            yield schema[keyword]
    for keyword in _SCHEMA_MAPS:
        for value in schema.get(keyword, {}).values():
            if isinstance(value, dict | bool):  # dependencies may map to name lists
                yield value
    for keyword in _SCHEMA_LISTS:
        yield from schema.get(keyword, [])
    items = schema.get("items")
    if isinstance(items, list):
        yield from items
    elif items is not None:
        yield items
    yield from schema.get("union", {}).get("items", [])
    conditional = schema.get("conditional", {})
    yield from (conditional[key] for key in ("when", "unless", "enforce") if key in conditional)


def _check_extensions(schema: Json, where: str, known_urls: set[str]) -> None:
    """Fail early on references or extension forms the validator could not evaluate."""
    if not isinstance(schema, dict):
        return
    for keyword in ("$ref", "optionalRef"):
        target = schema.get(keyword)
        document = target.partition("#")[0] if isinstance(target, str) else ""
        if document and document not in known_urls:
            raise ExpconfSchemaError(f"{where}: {keyword} to unknown schema {target!r}")
    for item in schema.get("union", {}).get("items", []):
        if not isinstance(item, dict) or not isinstance(item.get("unionKey"), str):
            raise ExpconfSchemaError(f"{where}: union item without a unionKey")
        _union_key(item["unionKey"])
    compare = schema.get("compareProperties")
    if compare is not None and compare.get("type") not in ("a<b", "a<=b", "a_is_subdir_of_b"):
        raise ExpconfSchemaError(f"{where}: unknown compareProperties {compare!r}")
    conditional = schema.get("conditional")
    if conditional is not None and (
        "enforce" not in conditional or not (("when" in conditional) ^ ("unless" in conditional))
    ):
        raise ExpconfSchemaError(f"{where}: conditional needs enforce and one of when/unless")
    for subschema in _subschemas(schema):
        _check_extensions(subschema, where, known_urls)


def _load_schemas(schema_dir: pathlib.Path) -> dict[str, dict[str, Json]]:
    """Every ``*.json`` schema of ``schema_dir`` by ``$id``, checked and ready to compile."""
    schemas: dict[str, dict[str, Json]] = {}
    for path in sorted(schema_dir.glob("*.json")):
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ExpconfSchemaError(f"{path}: {exc}") from exc
        url = schema.get("$id") if isinstance(schema, dict) else None
        if not isinstance(url, str):
            raise ExpconfSchemaError(f"{path}: no $id")
        dialect = schema.get("$schema", _DRAFT7)
        if not isinstance(dialect, str) or dialect.rstrip("#") != _DRAFT7.rstrip("#"):
            raise ExpconfSchemaError(f"{path}: $schema {dialect!r} is not draft-07")
        try:
            jsonschema.Draft7Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ExpconfSchemaError(f"{path}: not a draft-07 schema: {exc.message}") from exc
        # jsonschema picks the validator class of a referenced schema by its $schema,
        # which would swap our extended class for the plain Draft7Validator there.
        schemas[url] = {key: value for key, value in schema.items() if key != "$schema"}
    if EXPERIMENT_SCHEMA_URL not in schemas:
        raise ExpconfSchemaError(f"{schema_dir}: no schema with $id {EXPERIMENT_SCHEMA_URL}")
    known = set(schemas)
    for url, schema in schemas.items():
        _check_extensions(schema, url, known)
    return schemas


# --- rendering -----------------------------------------------------------------------


def render_path(path: Iterable[str | int]) -> str:
    """``["a", 0, "b"]`` as the master shows it: ``<config>.a[0].b``."""
    return _ROOT + "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)


def _to_json(config: Json) -> Json:
    """The config as the master receives it: JSON (tuples become lists, and so on)."""
    return json.loads(json.dumps(config, allow_nan=False))


class ExpconfValidator:
    """Validates configs against Determined 0.37's expconf schemas, like its master.

    ``expconf_dir`` is the directory holding ``expconf/`` (and ``test_cases/``), as
    returned by ``find_expconf_dir()``; a directory of schema files works as well.
    """

    def __init__(self, expconf_dir: pathlib.Path | str) -> None:
        root = pathlib.Path(expconf_dir)
        schema_dir = root / "expconf" if (root / "expconf").is_dir() else root
        self.root: Final = root
        self.test_cases_dir: Final = root / "test_cases"
        self.schemas: Final = _load_schemas(schema_dir)
        self._registry: Final = referencing.Registry().with_resources(
            (url, referencing.jsonschema.DRAFT7.create_resource(schema))
            for url, schema in self.schemas.items()
        )
        self._validators: dict[tuple[str, bool], Any] = {}

    def _validator(self, url: str, complete: bool) -> Any:
        if url not in self.schemas:
            raise KeyError(f"no expconf schema with $id {url!r}")
        key = (url, complete)
        if key not in self._validators:
            cls = _CompletenessValidator if complete else _SanityValidator
            self._validators[key] = cls(self.schemas[url], registry=self._registry)
        return self._validators[key]

    def problems(
        self, config: Json, schema_url: str = EXPERIMENT_SCHEMA_URL, *, complete: bool = False
    ) -> list[ExpconfProblem]:
        """All problems of ``config`` under the sanity (or ``complete``) check, sorted.

        A config that JSON cannot carry (NaN, unserializable objects) is one problem at
        ``<config>`` with keyword ``json``.
        """
        try:
            instance = _to_json(config)
        except (TypeError, ValueError) as exc:
            return [ExpconfProblem(_ROOT, f"is not JSON-serializable: {exc}", "json")]
        found = {
            ExpconfProblem(render_path(error.absolute_path), error.message, str(error.validator))
            for error in self._validator(schema_url, complete).iter_errors(instance)
        }
        return sorted(found, key=lambda problem: (str(problem), problem.keyword))

    def sanity_errors(self, config: Json, schema_url: str = EXPERIMENT_SCHEMA_URL) -> list[str]:
        """Why a master would reject ``config`` on submission (empty when it is accepted).

        ``eventuallyRequired`` and ``eventually`` are not enforced. Each message reads
        ``<config>.path.to[0].value: reason``.
        """
        return _unique(str(problem) for problem in self.problems(config, schema_url))

    def completeness_errors(
        self, config: Json, schema_url: str = EXPERIMENT_SCHEMA_URL
    ) -> list[str]:
        """Like ``sanity_errors``, plus ``eventuallyRequired`` and ``eventually``.

        The master applies this after filling in defaults, so a config as submitted
        usually fails it at the top level (``checkpoint_storage``, ``name``...); sections
        without master-side defaults (e.g. ``searcher``, via ``SEARCHER_SCHEMA_URL``) can
        be checked directly.
        """
        problems = self.problems(config, schema_url, complete=True)
        return _unique(str(problem) for problem in problems)

    def assert_sane(self, config: Json, schema_url: str = EXPERIMENT_SCHEMA_URL) -> None:
        """Raise ``AssertionError`` listing every sanity error of ``config``."""
        _raise_if(self.sanity_errors(config, schema_url), "would be rejected", schema_url)

    def assert_complete(self, config: Json, schema_url: str = EXPERIMENT_SCHEMA_URL) -> None:
        """Raise ``AssertionError`` listing every completeness error of ``config``."""
        _raise_if(self.completeness_errors(config, schema_url), "is incomplete", schema_url)


def _unique(messages: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(messages))


def _raise_if(errors: Sequence[str], what: str, url: str) -> None:
    if errors:
        listing = "\n  ".join(errors)
        raise AssertionError(f"config {what} by a Determined 0.37 master ({url}):\n  {listing}")
