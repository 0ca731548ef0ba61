"""``POST /tune``: a hyperparameter search whose trials run as tasks on the training queue.

The body is a ``POST /train`` body (without ``dry_run`` and ``warm_start``) plus
``search``; the space is checked against :mod:`shared.runs.search` here, so a
bad range is a 422 before anything is queued. The run is an ordinary run of
``model_id`` (409 while one is active, cancelled with ``POST
/train/<model_id>/cancel``); its status carries the ``tuning`` field. The API
never imports Optuna or worker code: it enqueues the search's parent task by name.
"""

from __future__ import annotations

import uuid
from typing import Any

import marshmallow as ma
from flask.views import MethodView
from marshmallow import validate

from api.auth import current_tenant, require
from api.context import services
from api.parsing import Blueprint
from api.training_schemas import StatusSchema, TrainRequestSchema, resolve_params
from shared.data.selection import DataSpec
from shared.runs.search import (
    DEFAULT_METRIC,
    DEFAULT_SPACE,
    DEFAULT_TRIALS,
    MAX_TRIALS,
    METRICS,
    space_errors,
)
from shared.runs.tuning import submit_search
from shared.webhooks.url_policy import validate_callback_url

blp = Blueprint("tuning", __name__, description="Hyperparameter search.")

#: ``POST /train`` fields a search does not take.
NOT_FOR_SEARCH = ("dry_run", "warm_start")


class SearchSchema(ma.Schema):
    """``search``: how many trials, which metric, which space, how many at once."""

    class Meta:
        unknown = ma.RAISE

    trials = ma.fields.Integer(strict=True, validate=validate.Range(1, MAX_TRIALS))
    metric = ma.fields.String(validate=validate.OneOf(METRICS))
    space = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.List(ma.fields.Raw()),
                           metadata={"description": "{hyperparameter: [low, high] or "
                                                    "[choice, ...]}; default: docs/tuning.md"})
    parallelism = ma.fields.Integer(strict=True, validate=validate.Range(1, MAX_TRIALS))

    @ma.validates("space")
    def _space(self, value: dict[str, Any], **_: Any) -> None:
        errors = space_errors(value)
        if errors:
            raise ma.ValidationError(errors)


class TuneRequestSchema(TrainRequestSchema):
    """``POST /tune``: a ``POST /train`` body plus ``search``."""

    search = ma.fields.Nested(SearchSchema)

    @ma.validates_schema
    def _search_needs_holdout(self, data: dict[str, Any], **_: Any) -> None:
        if (data.get("evaluation") or {}).get("holdout") == 0:
            raise ma.ValidationError("a search scores trials on the holdout: "
                                     "evaluation.holdout must be above 0",
                                     field_name="evaluation")
        space = (data.get("search") or {}).get("space") or {}
        if "warp-kos" in space.get("loss", []) and data.get("interaction_weights"):
            raise ma.ValidationError("warp-kos cannot take sample weights; leave it out of "
                                     "the loss choices or drop interaction_weights.",
                                     field_name="search")


def tune_request_schema() -> TuneRequestSchema:
    declared = TuneRequestSchema._declared_fields
    return TuneRequestSchema(exclude=tuple(f for f in NOT_FOR_SEARCH if f in declared))


def search_params(body: dict[str, Any]) -> dict[str, Any]:
    """The run's parameters: the training ones resolved, plus the search's, defaults filled."""
    search = body.get("search") or {}
    params = resolve_params(body)
    params["search"] = {
        "trials": search.get("trials", DEFAULT_TRIALS),
        "metric": search.get("metric", DEFAULT_METRIC),
        "space": search.get("space") or dict(DEFAULT_SPACE),
        "parallelism": search.get("parallelism"),
    }
    return params


@blp.route("/tune")
class Tune(MethodView):
    @require("train")
    @blp.arguments(tune_request_schema())
    @blp.response(202, StatusSchema)
    @blp.alt_response(409, description="The model_id already has a run queued or running; "
                                       "details hold its status.")
    def post(self, body: dict[str, Any]) -> Any:
        """Search hyperparameters; the best are fit on all the data and served."""
        svc = services()
        DataSpec.from_request(body)  # the same data-selection checks as POST /train
        callback_url = body.get("callback_url")
        if callback_url is not None:
            callback_url = validate_callback_url(callback_url,
                                                 svc.settings.callback_allow_private)
        model_id = body.get("model_id") or f"model-{uuid.uuid4().hex[:12]}"
        ref = submit_search(svc.runs, current_tenant(), model_id, search_params(body),
                            callback_url)
        return svc.runs.status(ref), 202
