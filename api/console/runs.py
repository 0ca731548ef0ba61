"""The console's one door into ``shared.runs``: models, statuses, starting, searching and
cancelling.

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
from api.tune import search_params, tune_request_schema
from shared.data.selection import DataSpec
from shared.errors import NotFound, ValidationFailed
from shared.runs.records import get_model, get_status, list_models
from shared.runs.tuning import submit_search

#: Most runs of one model the tuning page looks through for its searches.
MAX_SEARCHES = 20


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
    loaded, model_id = _request(TrainRequestSchema(), body, "training")
    svc = services()
    ref = svc.runs.submit(tenant, model_id, resolve_params(loaded), None)  # 503 without a broker
    return cast(dict[str, Any], svc.runs.status(ref))


def start_search(tenant: str, body: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``POST /tune`` body and queue the search, as the endpoint does."""
    loaded, model_id = _request(tune_request_schema(), body, "search")
    svc = services()
    ref = submit_search(svc.runs, tenant, model_id, search_params(loaded), None)
    return cast(dict[str, Any], svc.runs.status(ref))


def _request(schema: ma.Schema, body: dict[str, Any], what: str) -> tuple[dict[str, Any], str]:
    """The endpoint's validation of ``body`` (the same 422s), and the model id (a new one
    when the form left it empty)."""
    try:
        loaded = cast(dict[str, Any], schema.load(body))
    except ma.ValidationError as exc:
        raise ValidationFailed(f"Some {what} settings are not valid.", code="invalid_body",
                               details={"fields": exc.messages}) from exc
    DataSpec.from_request(loaded)  # the same 422s as the endpoint for a bad selection
    return loaded, loaded.get("model_id") or f"model-{uuid.uuid4().hex[:12]}"


def searches(tenant: str, model_id: str) -> list[dict[str, Any]]:
    """Status objects of the model's runs that were searches, newest first (the newest
    :data:`MAX_SEARCHES` runs looked at, each as ``GET /train/<id>/status?version=``)."""
    model = get_model(services().redis, tenant, model_id)
    if model is None:
        raise NotFound(f"There is no model '{model_id[:140]}'.", code="model_not_found")
    found = []
    last = int(model.get("last_version") or 0)
    for version in range(last, max(0, last - MAX_SEARCHES), -1):
        try:
            status = get_status(services().redis, tenant, model_id, version)
        except NotFound:
            continue
        if status.get("tuning"):
            found.append(cast(dict[str, Any], status))
    return found


def search(tenant: str, model_id: str, version: int | None) -> dict[str, Any]:
    """The status of one search (the newest when ``version`` is None); 404 when none."""
    for status in searches(tenant, model_id):
        if version is None or status["version"] == version:
            return status
    what = f"run v{version} of '{model_id[:140]}'" if version else f"model '{model_id[:140]}'"
    raise NotFound(f"There is no search for {what}.", code="search_not_found")
