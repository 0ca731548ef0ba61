"""Marshmallow schemas of ``/recommended_items`` and ``/similar_items``: validation and OpenAPI.

The shaping options (API.md, "Recommendations" and "Similar items") are shared
by both endpoints: ``filters`` (URL-encoded JSON in GET, a JSON list in POST),
``include_ids`` and ``exclude_ids`` (repeated or comma-separated in GET, a list
in POST). Their values are checked further by :mod:`api.shaping`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import marshmallow as ma
from marshmallow import fields, validate

from api.parsing import model_id_field

#: Largest ``max_recommendations``.
MAX_RECOMMENDATIONS = 1000


class SourceIds(fields.Field):  # type: ignore[type-arg]
    """One id or a list of them (JSON body)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise ma.ValidationError("Give one id (a string) or a list of strings.")
        return cast(list[str], items)


ID_LIST_DOC = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}


class ShapeQueryMixin(ma.Schema):
    """Shaping options in a query string."""

    filters = fields.String(metadata={
        "description": "URL-encoded JSON list of conditions on targets ({field, op, value}; "
        "fields id, type, name, metadata.<key>), checked against each target's newest entity "
        "record."})
    include_ids = fields.List(fields.String(), metadata={
        "description": "Rank only these targets (repeat or comma-separate); unknown ids are "
        "listed in unknown_ids."})
    exclude_ids = fields.List(fields.String(), metadata={
        "description": "Never return these targets (repeat or comma-separate)."})


class ShapeBodyMixin(ma.Schema):
    """Shaping options in a JSON body."""

    filters = fields.Raw(metadata={
        "description": "List of conditions on targets ({field, op, value}).",
        "type": "array", "items": {"type": "object"}})
    include_ids = SourceIds(metadata={"description": "Rank only these targets.", **ID_LIST_DOC})
    exclude_ids = SourceIds(metadata={"description": "Never return these targets.",
                                      **ID_LIST_DOC})


class RecommendOptionsMixin(ma.Schema):
    """Options only recommendations take."""

    new_targets = fields.String(
        load_default="exclude", validate=validate.OneOf(["exclude", "include"]),
        metadata={"description": "include: also score targets with an entity record but no "
                  "interactions, from the model's metadata features (rows: new_target true)."})
    explain = fields.Boolean(load_default=False, metadata={
        "description": "Add because: up to 3 targets of the source's own history most similar "
        "to the recommended one."})
    with_entities = fields.Boolean(load_default=False, metadata={
        "description": "Add the target's name and media_url from its newest entity record."})


class RecommendQuerySchema(ShapeQueryMixin, RecommendOptionsMixin):
    """Query parameters of ``GET /recommended_items``."""

    model_id = model_id_field(required=True, metadata={"description": "The model to ask."})
    source_id = fields.List(
        fields.String(),
        metadata={"description": "Source ids: repeat the parameter or give one comma-separated "
                  "value. Absent: every source of the model (streamed)."},
    )
    source_type = fields.String(metadata={"description": "Defaults to the model's source type."})
    target_type = fields.String(metadata={"description": "Defaults to the model's target type."})
    max_recommendations = fields.Integer(
        load_default=10, validate=validate.Range(1, MAX_RECOMMENDATIONS),
        metadata={"description": "Rows per source, 1 to 1000."},
    )
    output_format = fields.String(
        load_default="json", validate=validate.OneOf(["json", "csv"]),
        metadata={"description": "json (default) or csv (header source_id,target_id,rank,score)."},
    )
    exclude_seen = fields.Boolean(
        load_default=True,
        metadata={"description": "Leave out targets the source interacted with in the "
                  "fitted data."},
    )


class RecommendBodySchema(ShapeBodyMixin, RecommendQuerySchema):  # type: ignore[misc]
    """JSON body of ``POST /recommended_items``."""

    source_id = SourceIds(  # type: ignore[assignment]
        metadata={"description": "One source id or a list of them. Absent: every source.",
                  "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    )
    max_recommendations = fields.Integer(
        strict=True, load_default=10, validate=validate.Range(1, MAX_RECOMMENDATIONS),
        metadata={"description": "Rows per source, 1 to 1000."},
    )
    source_metadata = fields.Dict(
        keys=fields.String(),
        metadata={"description": "Metadata of a source the model never saw, used for cold start "
                  "of every requested source the model does not know."},
    )


class RecommendationSchema(ma.Schema):
    """One recommendation row."""

    source_id = fields.String()
    target_id = fields.String()
    rank = fields.Integer(metadata={"description": "1 is best."})
    score = fields.Float()
    fallback = fields.Boolean(
        metadata={"description": "True when made without the source's own history "
                  "(metadata cold start or most popular)."},
    )
    new_target = fields.Boolean(metadata={"description": "With new_targets=include: true for a "
                                          "target scored from its metadata alone."})
    because = fields.List(fields.String(), metadata={"description": "With explain=true."})
    name = fields.String(allow_none=True, metadata={"description": "With with_entities=true."})
    media_url = fields.String(allow_none=True,
                              metadata={"description": "With with_entities=true."})


class RecommendationsSchema(ma.Schema):
    """The JSON answer."""

    model_id = fields.String()
    version = fields.Integer()
    recommendations = fields.List(fields.Nested(RecommendationSchema))
    unknown_ids = fields.List(fields.String(), metadata={
        "description": "With include_ids: the given ids that name no target of the model."})


class SimilarQuerySchema(ShapeQueryMixin):
    """Query parameters of ``GET /similar_items``."""

    model_id = model_id_field(required=True, metadata={"description": "The model to ask."})
    target_id = fields.List(fields.String(), required=True, metadata={
        "description": "Target ids: repeat the parameter or give one comma-separated value."})
    max_recommendations = fields.Integer(
        load_default=10, validate=validate.Range(1, MAX_RECOMMENDATIONS),
        metadata={"description": "Similar targets per target, 1 to 1000."})
    output_format = fields.String(
        load_default="json", validate=validate.OneOf(["json", "csv"]),
        metadata={"description": "json (default) or csv (header "
                  "target_id,similar_id,rank,score)."})


class SimilarBodySchema(ShapeBodyMixin, SimilarQuerySchema):  # type: ignore[misc]
    """JSON body of ``POST /similar_items``."""

    target_id = SourceIds(  # type: ignore[assignment]
        required=True, metadata={"description": "One target id or a list.", **ID_LIST_DOC})
    max_recommendations = fields.Integer(
        strict=True, load_default=10, validate=validate.Range(1, MAX_RECOMMENDATIONS),
        metadata={"description": "Similar targets per target, 1 to 1000."})
    target_metadata = fields.Dict(keys=fields.String(), metadata={
        "description": "Metadata of a target the model never saw (its rows: fallback true)."})


class SimilarItemSchema(ma.Schema):
    """One similar-items row."""

    target_id = fields.String()
    similar_id = fields.String()
    rank = fields.Integer(metadata={"description": "1 is most similar."})
    score = fields.Float(metadata={"description": "Cosine similarity."})
    fallback = fields.Boolean(metadata={
        "description": "True when the target was represented from metadata or got the most "
        "popular targets."})


class SimilarItemsSchema(ma.Schema):
    """The JSON answer of /similar_items."""

    model_id = fields.String()
    version = fields.Integer()
    similar_items = fields.List(fields.Nested(SimilarItemSchema))
    unknown_ids = fields.List(fields.String())


NOT_READY = "The model's first training has not completed (details: its status)."
#: OpenAPI: the 200 answer is JSON, or CSV (same rows, header first) with output_format=csv.
CSV_DOC = {"200": {
    "description": "JSON, or CSV with output_format=csv.",
    "content": {
        "application/json": {"schema": RecommendationsSchema},
        "text/csv": {"schema": {
            "type": "string", "example": "source_id,target_id,rank,score\nu1,i7,1,0.8312\n"}},
    },
}}


