"""Marshmallow schemas of the training endpoints: they validate requests and document them.

Every range of docs/api.md's ``POST /train`` table is checked here; unknown fields
are refused (422). Defaults are resolved by :func:`resolve_params` so the run
record stores exactly what the worker will use.
"""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from api.parsing import model_id_field
from shared.contracts import EVALUATION_DEFAULTS, HYPERPARAMETER_DEFAULTS

LOSSES = ("warp", "bpr", "warp-kos")
#: Largest seed LightFM's numpy RandomState accepts.
MAX_SEED = 2**32 - 1



class HyperparametersSchema(ma.Schema):
    """LightFM's knobs; defaults: warp, 32 components, 10 epochs, 0.05, 0, 0, 10, 42."""

    class Meta:
        unknown = ma.RAISE

    loss = ma.fields.String(validate=validate.OneOf(LOSSES))
    no_components = ma.fields.Integer(strict=True, validate=validate.Range(1, 512))
    epochs = ma.fields.Integer(strict=True, validate=validate.Range(1, 1000))
    learning_rate = ma.fields.Float(
        allow_nan=False, validate=validate.Range(0, 1, min_inclusive=False))
    item_alpha = ma.fields.Float(
        allow_nan=False, validate=validate.Range(0, 1, max_inclusive=False))
    user_alpha = ma.fields.Float(
        allow_nan=False, validate=validate.Range(0, 1, max_inclusive=False))
    max_sampled = ma.fields.Integer(strict=True, validate=validate.Range(1, 1000))
    random_state = ma.fields.Integer(strict=True, validate=validate.Range(0, MAX_SEED))


class EvaluationSchema(ma.Schema):
    """Holdout metrics; ``{"holdout": 0}`` turns evaluation off."""

    class Meta:
        unknown = ma.RAISE

    holdout = ma.fields.Float(allow_nan=False, validate=validate.Range(0, 0.5))
    max_sources = ma.fields.Integer(strict=True, validate=validate.Range(1, 1_000_000))
    k = ma.fields.Integer(strict=True, validate=validate.Range(1, 1000))


class FilterConditionSchema(ma.Schema):
    """One ``data_filters`` condition; fields and values are checked by the data selection."""

    class Meta:
        unknown = ma.RAISE

    field = ma.fields.String(required=True)
    op = ma.fields.String(required=True, validate=validate.OneOf(
        ["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "exists"]))
    value = ma.fields.Raw(allow_none=True, metadata={
        "description": "required except for exists (default true)"})


class DataFiltersSchema(ma.Schema):
    """Conditions on entities and interactions; all of a list must hold."""

    class Meta:
        unknown = ma.RAISE

    entities = ma.fields.List(ma.fields.Nested(FilterConditionSchema))
    interactions = ma.fields.List(ma.fields.Nested(FilterConditionSchema))


class TrainRequestSchema(ma.Schema):
    """``POST /train``: every field optional."""

    class Meta:
        unknown = ma.RAISE

    model_id = model_id_field()
    maximum_interaction_age_days = ma.fields.Integer(strict=True, validate=validate.Range(min=1))
    data_tags = ma.fields.List(ma.fields.String())
    data_filters = ma.fields.Nested(DataFiltersSchema)
    callback_url = ma.fields.String(validate=validate.Length(min=1, max=2048))
    source_type = ma.fields.String(validate=validate.Length(min=1, max=128))
    target_type = ma.fields.String(validate=validate.Length(min=1, max=128))
    interaction_weights = ma.fields.Dict(
        keys=ma.fields.String(validate=validate.Length(max=128)),
        values=ma.fields.Float(allow_nan=False, validate=[
            validate.Range(min=0, max=1e6)]),
    )
    hyperparameters = ma.fields.Nested(HyperparametersSchema)
    use_metadata_features = ma.fields.Boolean()
    evaluation = ma.fields.Nested(EvaluationSchema)
    dry_run = ma.fields.Boolean()
    warm_start = ma.fields.Boolean()

    @ma.validates_schema
    def _warp_kos_takes_no_weights(self, data: dict[str, Any], **_: Any) -> None:
        loss = (data.get("hyperparameters") or {}).get("loss")
        if loss == "warp-kos" and data.get("interaction_weights"):
            raise ma.ValidationError(
                "warp-kos cannot take sample weights; drop interaction_weights or use "
                "warp or bpr.", field_name="interaction_weights")


def resolve_params(body: dict[str, Any]) -> dict[str, Any]:
    """The run's parameters with every default filled in (stored in the run record)."""
    return {
        "source_type": body.get("source_type", "user"),
        "target_type": body.get("target_type", "item"),
        "data_tags": body.get("data_tags"),
        "maximum_interaction_age_days": body.get("maximum_interaction_age_days"),
        "data_filters": body.get("data_filters"),
        "interaction_weights": dict(body.get("interaction_weights") or {}),
        "use_metadata_features": body.get("use_metadata_features", True),
        "hyperparameters": {**HYPERPARAMETER_DEFAULTS, **(body.get("hyperparameters") or {})},
        "evaluation": {**EVALUATION_DEFAULTS, **(body.get("evaluation") or {})},
    }


class CountsSchema(ma.Schema):
    """What a run used."""

    entities = ma.fields.Integer()
    interactions = ma.fields.Integer()
    sources = ma.fields.Integer()
    targets = ma.fields.Integer()


class MetricsSchema(ma.Schema):
    """Holdout metrics with the most-popular baseline."""

    k = ma.fields.Integer()
    precision_at_k = ma.fields.Float()
    recall_at_k = ma.fields.Float()
    auc = ma.fields.Float()
    baseline_precision_at_k = ma.fields.Float()
    evaluated_sources = ma.fields.Integer()


class CallbackSchema(ma.Schema):
    """Delivery state of the run's callback."""

    state = ma.fields.String()
    attempts = ma.fields.Integer()
    last_response_code = ma.fields.Integer(allow_none=True)
    next_attempt_at = ma.fields.String(allow_none=True)


class StatusSchema(ma.Schema):
    """The status object (docs/api.md, "Status")."""

    model_id = ma.fields.String()
    version = ma.fields.Integer()
    start_timestamp = ma.fields.String(allow_none=True)
    end_timestamp = ma.fields.String(allow_none=True)
    status = ma.fields.String(validate=validate.OneOf(["running", "completed", "error"]))
    phase = ma.fields.String()
    message = ma.fields.String()
    progress = ma.fields.Integer()
    data_batch_ids = ma.fields.List(ma.fields.String())
    counts = ma.fields.Nested(CountsSchema, allow_none=True)
    metrics = ma.fields.Nested(MetricsSchema, allow_none=True)
    callback = ma.fields.Nested(CallbackSchema, allow_none=True)
    training = ma.fields.Dict(allow_none=True, metadata={
        "description": "what the run chose; parent_version for a warm start"})


class DryRunSchema(ma.Schema):
    """``POST /train`` with ``dry_run``: what a run would use, and how long it would take."""

    model_id = ma.fields.String()
    dry_run = ma.fields.Boolean()
    data_batch_ids = ma.fields.List(ma.fields.String())
    counts = ma.fields.Nested(CountsSchema)
    pairs = ma.fields.Integer(metadata={"description": "distinct (source, target) pairs"})
    source_metadata_features = ma.fields.Integer()
    target_metadata_features = ma.fields.Integer()
    estimated_duration_seconds = ma.fields.Float()
    parameters = ma.fields.Dict()


class ModelSchema(ma.Schema):
    """A model: its serving version, the versions kept, and its last run's status."""

    model_id = ma.fields.String()
    serving_version = ma.fields.Integer(allow_none=True)
    versions = ma.fields.List(ma.fields.Integer())
    last_version = ma.fields.Integer()
    source_type = ma.fields.String(allow_none=True)
    target_type = ma.fields.String(allow_none=True)
    created_at = ma.fields.String(allow_none=True)
    updated_at = ma.fields.String(allow_none=True)
    status = ma.fields.Nested(StatusSchema, allow_none=True)
    pinned = ma.fields.Boolean(metadata={
        "description": "true after POST /models/<model_id>/serve: runs no longer replace it"})
    kept_versions = ma.fields.List(ma.fields.Dict(), metadata={
        "description": "GET /models/<model_id>: each kept version with its metrics, newest first"})


class StatusQuerySchema(ma.Schema):
    """``GET /status?model_id=...[&version=N]``."""

    class Meta:
        unknown = ma.RAISE

    model_id = ma.fields.String(required=True)
    version = ma.fields.Integer(validate=validate.Range(min=1))


class VersionQuerySchema(ma.Schema):
    """``GET /status/<model_id>[?version=N]``."""

    class Meta:
        unknown = ma.RAISE

    version = ma.fields.Integer(validate=validate.Range(min=1))
