"""Resolving ``"warm_start": true`` into a run's parameters (the API and schedule ticks).

A warm start continues the serving version: the run's parameters gain
``warm_start: {"parent_version": n}`` (the worker grows that version's state,
:mod:`worker.warm_start`), and take the parent's ``loss`` and
``no_components``. 409 ``no_model_to_warm_start`` without a serving version
that carries a state; 422 when the request asks for another loss or size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from shared.errors import Conflict, ValidationFailed
from shared.models.state import has_state, state_info
from shared.runs.records import serving_version
from shared.storage import Storage

#: Hyperparameters a warm start cannot change (the state's shapes and meaning depend on them).
FIXED = ("loss", "no_components")


def warm_params(r: redis.Redis, storage: Storage, tenant: str, model_id: str,
                requested: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` made into a warm start from the serving version.

    ``requested`` holds the hyperparameters the request set itself (before
    defaults), so an omitted loss is the parent's rather than a conflict.
    """
    parent = serving_version(r, tenant, model_id)
    if parent is None or not has_state(storage, tenant, model_id, parent):
        why = ("has no serving version" if parent is None else
               f"serves version {parent}, trained before warm starts were possible")
        raise Conflict(
            f"Model '{model_id}' {why}, so there is nothing to warm-start from; train it "
            "once without warm_start.",
            code="no_model_to_warm_start",
            details={"model_id": model_id, "serving_version": parent})
    info = state_info(storage, tenant, model_id, parent)
    changed = {name: {"requested": requested[name], "parent": info[name]}
               for name in FIXED if name in requested and requested[name] != info[name]}
    if changed:
        raise ValidationFailed(
            "A warm start keeps the parent version's "
            + " and ".join(f"{name} ({info[name]!r})" for name in changed)
            + "; leave them out, or train without warm_start.",
            code="warm_start_mismatch",
            details={"fields": changed, "parent_version": parent})
    hyper = {**dict(params.get("hyperparameters") or {}),
             **{name: info[name] for name in FIXED}}
    return {**params, "hyperparameters": hyper, "warm_start": {"parent_version": parent}}
