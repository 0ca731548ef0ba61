"""Similar items: ``GET /similar_items`` and its ``POST`` form (API.md, "Similar items").

Routes live on the recommendations blueprint (same scope, same serving state).
Rows are ``target_id, similar_id, rank, score, fallback``; CSV has the header
``target_id,similar_id,rank,score``. Lists of targets are answered in blocks and
streamed like recommendations.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import marshmallow as ma
from flask import Response
from flask.views import MethodView

from api.auth import current_tenant
from api.context import services
from api.parsing import Blueprint
from api.recommendation_schemas import (
    SimilarBodySchema,
    SimilarItemsSchema,
    SimilarQuerySchema,
)
from api.recommendations import answered, dedupe_ids, serving_state, target_index
from api.shaping import shape_from, split_ids
from api.streaming import block_rows, csv_document, json_document, plain_csv_rows, stream_answer
from shared.errors import ValidationFailed
from shared.models.blocks import RecBlock
from shared.models.serving import LoadedModel, MetadataLookup
from shared.models.shaped import resolve
from shared.models.similar import similar_blocks

blp = Blueprint("similar_items", __name__, description="Similar items from trained models.")

CSV_HEADER = ("target_id", "similar_id", "rank", "score")
SIMILAR_DOC = {"200": {
    "description": "JSON, or CSV with output_format=csv.",
    "content": {
        "application/json": {"schema": SimilarItemsSchema},
        "text/csv": {"schema": {
            "type": "string", "example": "target_id,similar_id,rank,score\ni1,i7,1,0.93\n"}},
    },
}}


_answered = answered(blp, SimilarItemsSchema, SIMILAR_DOC)


@blp.route("/similar_items")
class SimilarItems(MethodView):
    @_answered
    @blp.arguments(SimilarQuerySchema, location="query", unknown=ma.RAISE, as_kwargs=True)
    def get(self, **params: Any) -> Response:
        """Targets most like each given target (cosine of the model's target representations)."""
        return _similar(None, **params)

    @_answered
    @blp.arguments(SimilarBodySchema, location="json", as_kwargs=True)
    def post(self, **params: Any) -> Response:
        """The same as GET with a JSON body; ``target_metadata`` represents an unseen target."""
        return _similar(params.pop("target_metadata", None), **params)


def _entity_metadata(model: LoadedModel) -> MetadataLookup:
    """Metadata of an unseen target from its newest entity record (capped per request)."""
    from api.recommendations import entity_lookup

    return entity_lookup(current_tenant(), model, model.target_type)


def _similar(target_metadata: Mapping[str, Any] | None, *, model_id: str, target_id: list[str],
             max_recommendations: int, output_format: str, **options: Any) -> Response:
    ids = split_ids(target_id, "target_id")
    if not ids:
        raise ValidationFailed("target_id is empty: give one or more target ids.",
                               code="empty_target_id")
    targets = dedupe_ids(list(ids))
    shape = shape_from(options)
    svc = services()
    state = serving_state()
    model = state.cache.get(svc.redis, svc.storage, current_tenant(), model_id,
                            svc.settings.data_dir)
    index = target_index(model)
    cand = resolve(model, index, shape)
    lookup: MetadataLookup
    if target_metadata is not None:
        def lookup(_target_id: str) -> Mapping[str, Any] | None:
            return target_metadata
    else:
        lookup = _entity_metadata(model)
    blocks = similar_blocks(model, index, cand, targets, max_recommendations, lookup,
                            state.executor)
    unknown = cand.unknown_ids if shape.include_ids is not None else None

    def write(all_blocks: Iterable[RecBlock]) -> Iterator[bytes]:
        if output_format == "csv":
            return csv_document(CSV_HEADER, (plain_csv_rows(b) for b in all_blocks))
        rows = (block_rows(b, "target_id", "similar_id") for b in all_blocks)
        return json_document(model, "similar_items", rows, unknown)

    return stream_answer(model, blocks, write, output_format)
