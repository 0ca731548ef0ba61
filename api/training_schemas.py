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
from shared.contracts import (
    AUTO_EPOCHS_WITHOUT_HOLDOUT,
    EVALUATION_DEFAULTS,
    HYPERPARAMETER_DEFAULTS,
    METADATA_FEATURES_DEFAULT,
)
from shared.data.selection import MAX_DATA_TAGS, MAX_INTERACTION_AGE_DAYS

LOSSES = ("warp", "bpr", "warp-kos")
#: Largest seed LightFM's numpy RandomState accepts.
MAX_SEED = 2**32 - 1
#: Largest version number a request may name (far above any real count of runs).
MAX_VERSION = 2**31 - 1


class AutoOr(ma.fields.Field):  # type: ignore[type-arg]
    """The string ``"auto"``, or a value of the wrapped field (an integer, a boolean)."""

    def __init__(self, inner: ma.fields.Field, **kwargs: Any) -> None:  # type: ignore[type-arg]
        super().__init__(**kwargs)
        self.inner = inner

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if value == "auto":
            return "auto"
        try:
            return self.inner.deserialize(value, attr, data, **kwargs)
        except ma.ValidationError as exc:
            raise ma.ValidationError(
                f"must be \"auto\" or {_describe(self.inner)}.") from exc

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


def _describe(inner: ma.fields.Field) -> str:  # type: ignore[type-arg]
    if isinstance(inner, ma.fields.Boolean):
        return "true or false"
    bounds = [v for v in inner.validators if isinstance(v, validate.Range)]
    if bounds:
        return f"an integer from {bounds[0].min} to {bounds[0].max}"
    return "an integer"


class HyperparametersSchema(ma.Schema):
    """LightFM's knobs; defaults: warp, 32 components, "auto" epochs (at most 100), 0.05, 0,
    0, 10, 42."""

    class Meta:
        unknown = ma.RAISE

    loss = ma.fields.String(validate=validate.OneOf(LOSSES))
    no_components = ma.fields.Integer(strict=True, validate=validate.Range(1, 512))
    epochs = AutoOr(ma.fields.Integer(strict=True, validate=validate.Range(1, 1000)), metadata={
        "description": '"auto" (default): stop on the holdout metric; or a fixed count 1-1000',
        "oneOf": [{"type": "integer", "minimum": 1, "maximum": 1000},
                  {"type": "string", "enum": ["auto"]}]})
    max_epochs = ma.fields.Integer(strict=True, validate=validate.Range(1, 1000), metadata={
        "description": 'the most epochs "auto" may choose (default 100)'})
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
    maximum_interaction_age_days = ma.fields.Integer(
        strict=True, validate=validate.Range(1, MAX_INTERACTION_AGE_DAYS))
    data_tags = ma.fields.List(ma.fields.String(), validate=validate.Length(max=MAX_DATA_TAGS))
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
    use_metadata_features = AutoOr(ma.fields.Boolean(truthy={True}, falsy={False}), metadata={
        "description": '"auto" (default): keep metadata features only when they do not lower '
                       'the holdout precision_at_k; or true / false',
        "oneOf": [{"type": "boolean"}, {"type": "string", "enum": ["auto"]}]})
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


def resolve_hyperparameters(given: dict[str, Any], holdout: float) -> dict[str, Any]:
    """Hyperparameters with defaults; ``epochs: "auto"`` is stored as ``epochs_auto`` true
    with ``epochs`` the most it may train (``max_epochs``, or 20 without a holdout), so the
    stored ``epochs`` is always a number every reader can use for estimates."""
    hp = {**HYPERPARAMETER_DEFAULTS, **given}
    auto = hp["epochs"] == "auto"
    if auto:
        hp["epochs"] = hp["max_epochs"] if holdout > 0 else AUTO_EPOCHS_WITHOUT_HOLDOUT
    hp["epochs_auto"] = auto
    return hp


def resolve_params(body: dict[str, Any]) -> dict[str, Any]:
    """The run's parameters with every default filled in (stored in the run record)."""
    evaluation = {**EVALUATION_DEFAULTS, **(body.get("evaluation") or {})}
    return {
        "source_type": body.get("source_type", "user"),
        "target_type": body.get("target_type", "item"),
        "data_tags": body.get("data_tags"),
        "maximum_interaction_age_days": body.get("maximum_interaction_age_days"),
        "data_filters": body.get("data_filters"),
        "interaction_weights": dict(body.get("interaction_weights") or {}),
        "use_metadata_features": body.get("use_metadata_features", METADATA_FEATURES_DEFAULT),
        "hyperparameters": resolve_hyperparameters(dict(body.get("hyperparameters") or {}),
                                                   float(evaluation["holdout"])),
        "evaluation": evaluation,
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
    ndcg_at_k = ma.fields.Float(metadata={"description": "binary-relevance NDCG@k"})
    map_at_k = ma.fields.Float(metadata={
        "description": "mean over sources of average precision@k (divided by min(k, held out))"})
    coverage = ma.fields.Float(metadata={
        "description": "share of targets in at least one evaluated source's top k"})
    baseline_precision_at_k = ma.fields.Float()
    baseline_ndcg_at_k = ma.fields.Float()
    baseline_map_at_k = ma.fields.Float()
    baseline_coverage = ma.fields.Float()
    evaluated_sources = ma.fields.Integer()


class CurvePointSchema(ma.Schema):
    """The holdout precision after ``epoch`` epochs of the evaluation fit."""

    epoch = ma.fields.Integer()
    precision_at_k = ma.fields.Float()


class CandidatesSchema(ma.Schema):
    """Holdout precision@k with and without metadata features."""

    with_metadata = ma.fields.Float()
    without_metadata = ma.fields.Float()


class TrainingChoiceSchema(ma.Schema):
    """What was chosen from the data (API.md, "Choices made from the data")."""

    epochs = ma.fields.Integer(metadata={"description": "epochs the served model trained"})
    metadata_features = ma.fields.Boolean(metadata={
        "description": "whether the served model uses metadata features"})
    curve = ma.fields.List(ma.fields.Nested(CurvePointSchema), metadata={
        "description": "validation curve of the chosen setting's evaluation fit"})
    candidates = ma.fields.Nested(CandidatesSchema, metadata={
        "description": 'only when use_metadata_features "auto" compared the two'})
    parent_version = ma.fields.Integer(allow_none=True, metadata={
        "description": "the version a warm start continued from"})


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
    training = ma.fields.Nested(TrainingChoiceSchema, allow_none=True, metadata={
        "description": "null until known: epochs, metadata choice, curve, candidates; "
                       "parent_version for a warm start (known from the start)"})
    callback = ma.fields.Nested(CallbackSchema, allow_none=True)
    tuning = ma.fields.Dict(allow_none=True, metadata={
        "description": "a search's trials and best so far (POST /tune); null otherwise"})


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
    version = ma.fields.Integer(validate=validate.Range(1, MAX_VERSION))


class VersionQuerySchema(ma.Schema):
    """``GET /status/<model_id>[?version=N]``."""

    class Meta:
        unknown = ma.RAISE

    version = ma.fields.Integer(validate=validate.Range(1, MAX_VERSION))
