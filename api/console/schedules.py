"""A model's schedule and pinned version on its console page, with the forms that set or
remove the schedule and serve, pin or unpin a kept version.

The same service functions as ``/models/<id>/schedule`` and ``/models/<id>/serve``
(:mod:`api.fresh`): the form's body is validated by the endpoint's schema and turned
into a stored definition by the endpoint's own ``schedule_definition``; ``put_schedule``,
``delete_schedule``, ``serve_version`` and ``kept_versions`` do the rest.
"""

from __future__ import annotations

from typing import Any, cast

import marshmallow as ma
from flask import redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from api.console import runs
from api.console.base import (
    bp,
    checked_model_id,
    needs,
    selection_fields,
    signed_in,
    whole_number,
)
from api.context import services
from api.fresh import ScheduleRequestSchema, schedule_definition
from shared.errors import ValidationFailed
from shared.fresh.schedules import bind_redis, delete_schedule, get_schedule, put_schedule
from shared.fresh.versions import kept_versions, serve_version


def model_context(tenant: str, model_id: str) -> dict[str, Any]:
    """What the model page shows: the model with its latest run, its kept versions, its
    schedule (None when it has none) and the schedule form's fields."""
    model = runs.model_with_status(tenant, model_id)
    r = services().redis
    schedule = get_schedule(r, tenant, model_id)
    return {"model": model, "kept": kept_versions(r, tenant, model), "schedule": schedule,
            "schedule_form": schedule_defaults(schedule), "schedule_error": None}


def schedule_body(form: Any) -> dict[str, Any]:
    """A ``PUT /models/<id>/schedule`` body from the form's fields: each tick trains, or
    runs a search (default space) when the form's ``kind`` is ``tune``."""
    body: dict[str, Any] = {"warm_start": form.get("warm_start") == "1",
                            "only_with_new_data": form.get("only_with_new_data") == "1"}
    cron = form.get("cron", "").strip()
    interval = form.get("interval_minutes", "").strip()
    if cron:
        body["cron"] = cron
    if interval:
        try:
            body["interval_minutes"] = float(interval)
        except ValueError:
            raise ValidationFailed("Every how many minutes is a number.", code="invalid_body",
                                   details={"fields": {"interval_minutes": ["a number"]}}
                                   ) from None
    train: dict[str, Any] = dict(selection_fields(form, with_model_id=False))
    epochs = whole_number(form, "epochs", "Epochs", 1, 1000)
    if epochs is not None:
        train["hyperparameters"] = {"epochs": epochs}
    body["tune" if form.get("kind") == "tune" else "train"] = train
    return body


def set_schedule(tenant: str, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Validate and store the schedule, as ``PUT /models/<id>/schedule`` does."""
    try:
        loaded = ScheduleRequestSchema().load(body)
    except ma.ValidationError as exc:
        raise ValidationFailed("Some schedule settings are not valid.", code="invalid_schedule",
                               details={"fields": exc.messages}) from exc
    svc = services()
    bind_redis(svc.celery, svc.redis)
    return put_schedule(svc.redis, svc.celery, tenant, model_id, schedule_definition(loaded))


def _back(model_id: str) -> ResponseReturnValue:
    return redirect(url_for("console.model_page", model_id=model_id) + "#schedule-h")


@bp.route("/runs/<model_id>/schedule", methods=["POST"])
@needs("train")
def save_schedule(model_id: str) -> ResponseReturnValue:
    """Create or replace the model's schedule from the form."""
    tenant = signed_in().tenant
    context = model_context(tenant, checked_model_id(model_id))  # 404 for an unknown model
    try:
        set_schedule(tenant, model_id, schedule_body(request.form))
    except ValidationFailed as exc:
        context.update(schedule_form=request.form, schedule_error=exc)
        return render_template("console/model.html", **context), exc.status
    return _back(model_id)


@bp.route("/runs/<model_id>/schedule/delete", methods=["POST"])
@needs("train")
def remove_schedule(model_id: str) -> ResponseReturnValue:
    """Remove the model's schedule (a 404 page when it has none)."""
    svc = services()
    bind_redis(svc.celery, svc.redis)
    delete_schedule(svc.redis, svc.celery, signed_in().tenant, checked_model_id(model_id))
    return _back(model_id)


@bp.route("/runs/<model_id>/serve", methods=["POST"])
@needs("train")
def serve(model_id: str) -> ResponseReturnValue:
    """Serve a kept version at once, pinned unless the form says not (unpin: the serving
    version again, without the pin)."""
    version = whole_number(request.form, "version", "The version", 1)
    if version is None:
        raise ValidationFailed("Choose a version to serve.", code="invalid_body")
    serve_version(services().redis, signed_in().tenant, checked_model_id(model_id), version,
                  pin=request.form.get("pin") == "1")
    return _back(model_id)


def schedule_defaults(schedule: dict[str, Any] | None) -> dict[str, str]:
    """The form's fields filled from the current schedule (empty ones without it)."""
    if not schedule:
        return {"kind": "train", "only_with_new_data": "1"}
    train = cast(dict[str, Any], schedule.get("train") or schedule.get("tune") or {})
    epochs = (train.get("hyperparameters") or {}).get("epochs")
    fields = {"kind": "tune" if schedule.get("tune") else "train",
              "cron": schedule.get("cron") or "",
              "interval_minutes": (f"{schedule['interval_minutes']:g}"
                                   if schedule.get("interval_minutes") else ""),
              "data_tags": ", ".join(train.get("data_tags") or []),
              "epochs": str(epochs) if isinstance(epochs, int) else ""}
    for flag in ("warm_start", "only_with_new_data"):
        if schedule.get(flag):
            fields[flag] = "1"
    return fields
