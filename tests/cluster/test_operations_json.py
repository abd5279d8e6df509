"""Searcher operations survive a trip through our JSON exactly as the master sees them."""

from __future__ import annotations

import json
import uuid

import pytest
from determined import searcher
from hypothesis import given
from hypothesis import strategies as st

from determined_dsat.runners.cluster.operations import operations_from_json, operations_to_json

request_ids = st.uuids()
hparams = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.one_of(st.integers(), st.booleans(), st.text(max_size=8), st.none()),
    max_size=4,
)
operations = st.one_of(
    st.builds(lambda r, h: searcher.Create(r, h, None), request_ids, hparams),
    st.builds(searcher.ValidateAfter, request_ids, st.integers(min_value=0, max_value=10**6)),
    st.builds(searcher.Close, request_ids),
    st.builds(searcher.Shutdown, st.booleans(), st.booleans()),
    st.builds(searcher.Progress, st.floats(min_value=0, max_value=1)),
)


def _wire(ops: list[searcher.Operation]) -> list[dict[str, object]]:
    return [op._to_searcher_operation().to_json() for op in ops]


@given(st.lists(operations, max_size=6))
def test_round_trip_keeps_the_wire_form(ops: list[searcher.Operation]) -> None:
    document = json.loads(json.dumps(operations_to_json(ops)))
    again = operations_from_json(document)
    assert [type(op) for op in again] == [type(op) for op in ops]
    assert _wire(again) == _wire(ops)


def test_create_keeps_hparams_and_request_id() -> None:
    rid = uuid.uuid4()
    (op,) = operations_from_json(operations_to_json([searcher.Create(rid, {"a": {"b": 1}}, None)]))
    assert isinstance(op, searcher.Create)
    assert op.request_id == rid and json.loads(op.hparams) == {"a": {"b": 1}}


def test_unknown_versions_are_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        operations_from_json({"version": 99, "operations": []})
