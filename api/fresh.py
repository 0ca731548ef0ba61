"""Fresh models: ``/models/<model_id>/schedule`` and ``/models/<model_id>/serve``.

A schedule's ``train`` body is validated like ``POST /train`` (without
``model_id``, ``dry_run`` and ``warm_start``, which the schedule carries
itself) and stored with its resolved parameters, so every tick submits
exactly what ``POST /train`` would (:mod:`shared.fresh.ticks`). ``serve``
makes a kept version serving at once and pins it (:mod:`shared.fresh.versions`).
Every endpoint needs the ``train`` scope.
"""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask.views import MethodView
from marshmallow import validate

from api.auth import current_tenant, require
from api.context import services
from api.parsing import Blueprint
from api.training import _model_id
from api.training_schemas import ModelSchema, TrainRequestSchema, resolve_params
from api.tune import TuneRequestSchema, search_params
from shared.data.selection import DataSpec
from shared.errors import NotFound, ValidationFailed
from shared.fresh.schedules import (
    bind_redis,
    delete_schedule,
    get_schedule,
    parse_cron,
    put_schedule,
)
from shared.fresh.versions import kept_versions, serve_version
from shared.runs.records import get_status
from shared.webhooks.url_policy import validate_callback_url

blp = Blueprint("fresh", __name__,
                description="Fresh models: schedules, kept versions and pinning.")


class ScheduleTrainSchema(TrainRequestSchema):
    """A schedule's ``train`` body: ``POST /train`` without what the schedule decides."""

    class Meta:
        unknown = ma.RAISE
        exclude = ("model_id", "dry_run", "warm_start")


class ScheduleTuneSchema(TuneRequestSchema):
    """A schedule's ``tune`` body: ``POST /tune`` without what the schedule decides."""

    class Meta:
        unknown = ma.RAISE
        exclude = ("model_id", "dry_run", "warm_start")


class ScheduleRequestSchema(ma.Schema):
    """``PUT /models/<model_id>/schedule``."""

    class Meta:
        unknown = ma.RAISE

    interval_minutes = ma.fields.Float(allow_nan=False, validate=validate.Range(
        min=0, min_inclusive=False, max=366 * 24 * 60))
    cron = ma.fields.String(validate=validate.Length(min=9, max=200), metadata={
        "description": "5 fields, UTC"})
    train = ma.fields.Nested(ScheduleTrainSchema)
    tune = ma.fields.Nested(ScheduleTuneSchema, metadata={
        "description": "a POST /tune body without model_id: each tick runs a search"})
    warm_start = ma.fields.Boolean(load_default=False)
    only_with_new_data = ma.fields.Boolean(load_default=True)

    @ma.validates_schema
    def _one_of_each(self, data: dict[str, Any], **_: Any) -> None:
        if ("interval_minutes" in data) == ("cron" in data):
            raise ma.ValidationError("give exactly one of interval_minutes and cron",
                                     field_name="interval_minutes")
        if ("train" in data) == ("tune" in data):
            raise ma.ValidationError("give exactly one of train (a POST /train body without "
                                     "model_id) and tune (a POST /tune body without model_id)",
                                     field_name="train")
        if "tune" in data and data.get("warm_start"):
            raise ma.ValidationError("a search starts afresh: warm_start goes with train, "
                                     "not tune", field_name="warm_start")


class TickSchema(ma.Schema):
    """One tick of a schedule."""

    at = ma.fields.String()
    outcome = ma.fields.String(validate=validate.OneOf(
        ["started", "skipped_no_new_data", "skipped_already_training", "refused"]))
    version = ma.fields.Integer(allow_none=True)
    message = ma.fields.String()


class ScheduleSchema(ma.Schema):
    """A model's schedule (docs/api.md, "Fresh models")."""

    model_id = ma.fields.String()
    interval_minutes = ma.fields.Float()
    cron = ma.fields.String()
    train = ma.fields.Dict()
    tune = ma.fields.Dict()
    warm_start = ma.fields.Boolean()
    only_with_new_data = ma.fields.Boolean()
    next_run_at = ma.fields.String()
    last_tick = ma.fields.Nested(TickSchema, allow_none=True)
    recent_ticks = ma.fields.List(ma.fields.Nested(TickSchema))
    updated_at = ma.fields.String(allow_none=True)


class ServeRequestSchema(ma.Schema):
    """``POST /models/<model_id>/serve``."""

    class Meta:
        unknown = ma.RAISE

    version = ma.fields.Integer(strict=True, required=True, validate=validate.Range(min=1))
    pin = ma.fields.Boolean(load_default=True, metadata={
        "description": "false: serve it now, but let the next completed run replace it"})


def schedule_definition(body: dict[str, Any]) -> dict[str, Any]:
    """What is stored: the contract's fields, plus the run's resolved params."""
    svc = services()
    minimum = svc.settings.schedule_min_interval_minutes
    if "interval_minutes" in body and body["interval_minutes"] < minimum:
        raise ValidationFailed(f"interval_minutes must be at least {minimum:g}.",
                               code="invalid_schedule",
                               details={"fields": {"interval_minutes": f">= {minimum:g}"}})
    if "cron" in body:
        parse_cron(body["cron"])
    kind = "tune" if "tune" in body else "train"
    train = body[kind]
    DataSpec.from_request(train)  # the same 422s as POST /train
    callback_url = train.get("callback_url")
    if callback_url is not None:
        callback_url = validate_callback_url(callback_url, svc.settings.callback_allow_private)
    timing = ({"cron": " ".join(body["cron"].split())} if "cron" in body
              else {"interval_minutes": body["interval_minutes"]})
    params = search_params(train) if kind == "tune" else resolve_params(train)
    return {**timing, kind: train, "warm_start": body["warm_start"],
            "only_with_new_data": body["only_with_new_data"],
            "params": params, "callback_url": callback_url}


@blp.route("/models/<model_id>/schedule")
class Schedule(MethodView):
    @require("train")
    @blp.arguments(ScheduleRequestSchema)
    @blp.response(200, ScheduleSchema)
    def put(self, body: dict[str, Any], model_id: str) -> Any:
        """Create or replace the model's schedule (the model need not exist yet)."""
        svc = services()
        bind_redis(svc.celery, svc.redis)
        return put_schedule(svc.redis, svc.celery, current_tenant(), _model_id(model_id),
                            schedule_definition(body))

    @require("train")
    @blp.response(200, ScheduleSchema)
    def get(self, model_id: str) -> Any:
        """The model's schedule, its next tick and its recent ticks; 404 when none."""
        found = get_schedule(services().redis, current_tenant(), _model_id(model_id))
        if found is None:
            raise NotFound(f"Model '{model_id}' has no schedule.", code="schedule_not_found",
                           details={"model_id": model_id})
        return found

    @require("train")
    @blp.response(200, ScheduleSchema)
    def delete(self, model_id: str) -> Any:
        """Remove the model's schedule (returned as it was); 404 when none."""
        svc = services()
        tenant = current_tenant()
        bind_redis(svc.celery, svc.redis)
        found = get_schedule(svc.redis, tenant, _model_id(model_id))
        delete_schedule(svc.redis, svc.celery, tenant, model_id)
        return found


@blp.route("/models/<model_id>/serve")
class Serve(MethodView):
    @require("train")
    @blp.arguments(ServeRequestSchema)
    @blp.response(200, ModelSchema)
    def post(self, body: dict[str, Any], model_id: str) -> Any:
        """Serve a kept version at once and pin it until the next serve."""
        svc = services()
        tenant = current_tenant()
        model = serve_version(svc.redis, tenant, _model_id(model_id), body["version"],
                              pin=body["pin"])
        return {**model, "kept_versions": kept_versions(svc.redis, tenant, model),
                "status": get_status(svc.redis, tenant, model_id)}
