"""The console's one door into ``shared.runs``: models, statuses, starting and cancelling.

Every call into ``shared.runs`` from the console goes through this module, so a
change of those signatures is fixed here alone. Each function mirrors what the
matching ``/v1/recommender`` endpoint does, with the same service functions.
"""

from __future__ import annotations

import uuid
from typing import Any, cast

import marshmallow as ma

from api.context import services
from api.training_schemas import TrainRequestSchema, resolve_params
from shared.data.selection import DataSpec
from shared.errors import NotFound, ValidationFailed
from shared.runs.records import get_model, get_status, list_models


def status_or_none(tenant: str, model_id: str) -> dict[str, Any] | None:
    """The status object of the model's latest run, or None when it has none."""
    try:
        return cast(dict[str, Any], get_status(services().redis, tenant, model_id))
    except NotFound:
        return None


def models_with_status(tenant: str) -> list[dict[str, Any]]:
    """The tenant's models, newest first, each with its latest run's status (``GET /models``)."""
    models = list_models(services().redis, tenant)
    return [{**m, "status": status_or_none(tenant, m["model_id"])} for m in reversed(models)]


def model_with_status(tenant: str, model_id: str) -> dict[str, Any]:
    """One model with its latest run's status (``GET /models/<id>``); 404 when unknown."""
    model = get_model(services().redis, tenant, model_id)
    if model is None:
        raise NotFound(f"There is no model '{model_id[:140]}'.", code="model_not_found")
    return {**model, "status": status_or_none(tenant, model_id)}


def cancel(tenant: str, model_id: str) -> dict[str, Any]:
    """Cancel the model's queued or running run (``POST /train/<id>/cancel``)."""
    status, _ended = services().runs.request_cancel(tenant, model_id)
    return cast(dict[str, Any], status)


def start(tenant: str, body: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``POST /train`` body and queue the run, as the endpoint does."""
    try:
        loaded = TrainRequestSchema().load(body)
    except ma.ValidationError as exc:
        raise ValidationFailed("Some training settings are not valid.", code="invalid_body",
                               details={"fields": exc.messages}) from exc
    DataSpec.from_request(loaded)  # the same 422s as the endpoint for a bad selection
    svc = services()
    params = resolve_params(loaded)
    model_id = loaded.get("model_id") or f"model-{uuid.uuid4().hex[:12]}"
    ref = svc.runs.submit(tenant, model_id, params, None)  # 503 (run ended) without a broker
    return cast(dict[str, Any], svc.runs.status(ref))
