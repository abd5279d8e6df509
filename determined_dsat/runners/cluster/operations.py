"""Searcher operations as JSON, in the master's own wire format (no pickle).

The on-cluster runner saves the operations it answered an event with, so that a
restarted runner can post exactly the same ones again if the master never got them.
Determined's ``RemoteSearchRunner`` pickles them; we store the ``v1SearcherOperation``
JSON the master receives, and read it back into ``determined.searcher`` operations.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from determined import searcher
from determined.common.api import bindings

OPERATIONS_VERSION = 1


def operations_to_json(operations: Sequence[searcher.Operation]) -> dict[str, Any]:
    """A versioned JSON document of ``operations``, in order."""
    return {
        "version": OPERATIONS_VERSION,
        "operations": [op._to_searcher_operation().to_json() for op in operations],
    }


def operations_from_json(document: Mapping[str, Any]) -> list[searcher.Operation]:
    """The operations :func:`operations_to_json` wrote; ``ValueError`` on anything else."""
    if document.get("version") != OPERATIONS_VERSION:
        raise ValueError(f"unsupported operations version {document.get('version')!r}")
    return [_operation(bindings.v1SearcherOperation.from_json(d)) for d in document["operations"]]


def _operation(op: bindings.v1SearcherOperation) -> searcher.Operation:
    if op.createTrial is not None:
        create = op.createTrial
        return searcher.Create(
            request_id=uuid.UUID(create.requestId),
            hparams=json.loads(create.hyperparams or "{}"),
            checkpoint=None,
        )
    if op.trialOperation is not None and op.trialOperation.validateAfter is not None:
        validate = op.trialOperation.validateAfter
        return searcher.ValidateAfter(
            request_id=uuid.UUID(validate.requestId), length=int(validate.length or 0)
        )
    if op.closeTrial is not None:
        return searcher.Close(request_id=uuid.UUID(op.closeTrial.requestId))
    if op.shutDown is not None:
        return searcher.Shutdown(cancel=bool(op.shutDown.cancel), failure=bool(op.shutDown.failure))
    if op.setSearcherProgress is not None:
        return searcher.Progress(float(op.setSearcherProgress.progress or 0.0))
    raise ValueError(f"unknown searcher operation {op.to_json()}")
