"""Training runs, their status, and models.

``POST /train`` validates (schemas in :mod:`api.training_schemas`), registers a
queued run and enqueues it by task name; the API never imports LightFM.
Status always comes from the run record in Redis (:mod:`shared.runs.records`), never
from Celery's result state, so an expired or unknown task never reads as
"pending". Every endpoint here needs the ``train`` scope.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from flask import jsonify
from flask.views import MethodView

from api.auth import current_tenant, require
from api.bounded import bounded
from api.context import services
from api.parsing import Blueprint
from api.training_schemas import (
    DryRunSchema,
    ModelSchema,
    StatusQuerySchema,
    StatusSchema,
    TrainRequestSchema,
    VersionQuerySchema,
    resolve_params,
)
from shared.contracts import is_model_id
from shared.data.assembly import build_dataset, dataset_options, describe
from shared.data.selection import DataSpec, select_data
from shared.errors import NotFound
from shared.fresh.schedules import bind_redis, delete_schedule
from shared.fresh.versions import kept_versions
from shared.fresh.warm import warm_params
from shared.runs.records import get_model, get_status, list_models
from shared.storage import model_dir
from shared.webhooks.url_policy import validate_callback_url

blp = Blueprint("training", __name__, description="Training runs, their status, and models.")


#: Seconds of one LightFM epoch per (source, target) pair at 32 components and one thread
#: (WARP; measured by bench/train.py), for dry-run estimates.
SECONDS_PER_PAIR_EPOCH = 2.0e-6
#: Seconds to read and assemble one interaction row.
SECONDS_PER_ROW = 1.0e-6


def _model_id(model_id: str) -> str:
    if not is_model_id(model_id):
        raise NotFound(f"There is no model '{model_id[:140]}'.", code="model_not_found",
                       details={"model_id": model_id[:140]})
    return model_id


def estimate_seconds(rows: int, pairs: int, params: dict[str, Any], threads: int) -> float:
    """A rough duration of a run: data assembly, the fits, and the evaluation scoring."""
    hp, ev = params["hyperparameters"], params["evaluation"]
    per_epoch = pairs * SECONDS_PER_PAIR_EPOCH * max(hp["no_components"], 8) / 32
    fits = 2 if ev["holdout"] > 0 else 1
    fit = fits * hp["epochs"] * per_epoch / max(1, min(threads, 4)) ** 0.8
    scoring = per_epoch if ev["holdout"] > 0 else 0.0
    return round(float(rows * SECONDS_PER_ROW + fit + scoring + 1.0), 1)


def _dry_run(tenant: str, model_id: str, spec: DataSpec, params: dict[str, Any]) -> dict[str, Any]:
    svc = services()
    selected = select_data(svc.storage, svc.redis, tenant, spec, datetime.now(UTC))
    rows = selected.interactions.num_rows
    facts: dict[str, Any] = {"entities": 0, "interactions": 0, "sources": 0, "targets": 0,
                             "pairs": 0, "source_metadata_features": 0,
                             "target_metadata_features": 0}
    if rows:
        facts = describe(build_dataset(selected.entities, selected.interactions,
                                       dataset_options(params)))
    counts = {k: facts[k] for k in ("entities", "interactions", "sources", "targets")}
    return {
        "model_id": model_id,
        "dry_run": True,
        "data_batch_ids": selected.batch_ids,
        "counts": counts,
        "pairs": facts["pairs"],
        "source_metadata_features": facts["source_metadata_features"],
        "target_metadata_features": facts["target_metadata_features"],
        "estimated_duration_seconds": estimate_seconds(
            rows, facts["pairs"], params, svc.settings.train_threads),
        "parameters": params,
    }


@blp.route("/train")
class Train(MethodView):
    @require("train")
    @blp.arguments(TrainRequestSchema)
    @blp.response(202, StatusSchema)
    @blp.alt_response(200, schema=DryRunSchema, description="dry_run: counts and an estimate.")
    @blp.alt_response(409, description="The model_id already has a run queued or running; "
                                       "details hold its status.")
    def post(self, body: dict[str, Any]) -> Any:
        """Train a model (or, with dry_run, resolve the data and estimate the run)."""
        svc = services()
        tenant = current_tenant()
        spec = DataSpec.from_request(body)
        params = resolve_params(body)
        callback_url = body.get("callback_url")
        if callback_url is not None:
            callback_url = validate_callback_url(callback_url,
                                                 svc.settings.callback_allow_private)
        model_id = body.get("model_id") or f"model-{uuid.uuid4().hex[:12]}"
        if body.get("dry_run"):
            # A Response passes through untouched (the 202 schema describes run statuses).
            result = bounded(lambda: _dry_run(tenant, model_id, spec, params), "dry run")
            response = jsonify(DryRunSchema().dump(result))
            response.status_code = 200
            return response
        if body.get("warm_start"):
            params = warm_params(svc.redis, svc.storage, tenant, model_id,
                                 body.get("hyperparameters") or {}, params)
        ref = svc.runs.submit(tenant, model_id, params, callback_url)
        return svc.runs.status(ref), 202


@blp.route("/train/<model_id>/cancel")
class Cancel(MethodView):
    @require("train")
    @blp.response(202, StatusSchema)
    @blp.alt_response(200, schema=StatusSchema, description="A queued run, ended at once.")
    @blp.alt_response(409, description="Nothing is queued or running for this model.")
    def post(self, model_id: str) -> Any:
        """Cancel the model's queued or running run (it ends as error, phase cancelled)."""
        status, ended = services().runs.request_cancel(current_tenant(), _model_id(model_id))
        return status, (200 if ended else 202)


@blp.route("/status")
class StatusByQuery(MethodView):
    @require("train")
    @blp.arguments(StatusQuerySchema, location="query")
    @blp.response(200, StatusSchema)
    def get(self, query: dict[str, Any]) -> Any:
        """The status of the model's latest run (or of ``version``)."""
        return get_status(services().redis, current_tenant(), _model_id(query["model_id"]),
                          query.get("version"))


@blp.route("/status/<model_id>")
class StatusByPath(MethodView):
    @require("train")
    @blp.arguments(VersionQuerySchema, location="query")
    @blp.response(200, StatusSchema)
    def get(self, query: dict[str, Any], model_id: str) -> Any:
        """The status of the model's latest run (or of ``version``)."""
        return get_status(services().redis, current_tenant(), _model_id(model_id),
                          query.get("version"))


def _with_status(model: dict[str, Any], tenant: str) -> dict[str, Any]:
    try:
        status = get_status(services().redis, tenant, model["model_id"])
    except NotFound:
        status = None
    return {**model, "status": status}


@blp.route("/models")
class Models(MethodView):
    @require("train")
    @blp.response(200, ModelSchema(many=True))
    def get(self) -> Any:
        """The tenant's models with their serving version and last run."""
        tenant = current_tenant()
        return [_with_status(m, tenant) for m in list_models(services().redis, tenant)]


@blp.route("/models/<model_id>")
class Model(MethodView):
    @require("train")
    @blp.response(200, ModelSchema)
    def get(self, model_id: str) -> Any:
        """One model: serving version, versions kept, last run's status."""
        tenant = current_tenant()
        model = get_model(services().redis, tenant, _model_id(model_id))
        if model is None:
            raise NotFound(f"There is no model '{model_id}'.", code="model_not_found",
                           details={"model_id": model_id})
        return {**_with_status(model, tenant),
                "kept_versions": kept_versions(services().redis, tenant, model)}

    @require("train")
    @blp.response(200, ModelSchema)
    @blp.alt_response(409, description="The model is training; cancel the run first.")
    def delete(self, model_id: str) -> Any:
        """Remove a model, its runs and its stored versions."""
        svc = services()
        tenant = current_tenant()
        model = svc.runs.delete_model(tenant, _model_id(model_id))
        svc.storage.delete_tree(model_dir(tenant, model_id))
        bind_redis(svc.celery, svc.redis)
        delete_schedule(svc.redis, svc.celery, tenant, model_id, missing_ok=True)
        return {**model, "status": None}
