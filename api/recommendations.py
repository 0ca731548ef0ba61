"""Recommendations from trained models: ``GET /recommended_items`` and its ``POST`` form.

The view validates with marshmallow (the same schemas document OpenAPI),
resolves the serving version through the process's :class:`ModelCache` (so
a new version is served at once), and writes JSON or CSV. Answers for a few
sources are built whole; bigger ones, and every-source requests, are
streamed block by block as one valid JSON document or CSV file, so a model
with a million sources never builds its whole answer in memory.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import marshmallow as ma
import orjson
from flask import Response, current_app, stream_with_context
from flask.views import MethodView
from marshmallow import fields, validate

from api.auth import current_tenant, require
from api.context import services
from api.errors import ErrorBodySchema
from api.parsing import Blueprint, model_id_field
from shared.errors import DependencyUnavailable, ServiceError, ValidationFailed
from shared.models import serving
from shared.models.blocks import RecBlock, clean_scores, recommend_all, recommend_ids
from shared.models.serving import LoadedModel, MetadataLookup, ModelCache

log = logging.getLogger(__name__)

blp = Blueprint("recommendations", __name__, description="Recommendations from trained models.")

#: Key of the per-app :class:`Serving` state in ``app.extensions``.
SERVING_EXTENSION = "recsys_serving"
#: Largest ``max_recommendations``.
MAX_RECOMMENDATIONS = 1000
#: Longest source id a request may name (ids become fixed-width numpy strings per block).
MAX_ID_LENGTH = 1024
CSV_HEADER = ("source_id", "target_id", "rank", "score")


class SourceIds(fields.Field):  # type: ignore[type-arg]
    """One source id or a list of them (JSON body)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> list[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise ma.ValidationError("Give one source id (a string) or a list of strings.")
        return cast(list[str], items)


class RecommendQuerySchema(ma.Schema):
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


class RecommendBodySchema(RecommendQuerySchema):
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


class RecommendationsSchema(ma.Schema):
    """The JSON answer."""

    model_id = fields.String()
    version = fields.Integer()
    recommendations = fields.List(fields.Nested(RecommendationSchema))


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


def _answered(view: Callable[..., Response]) -> Callable[..., Response]:
    """What GET and POST share: the ``recommend`` scope and the documented answers."""
    view = require("recommend")(view)
    view = blp.doc(responses=CSV_DOC)(view)
    view = blp.alt_response(422, schema=ErrorBodySchema, description="Invalid parameters.")(view)
    view = blp.alt_response(409, schema=ErrorBodySchema, description=NOT_READY)(view)
    view = blp.alt_response(404, schema=ErrorBodySchema, description="Unknown model_id.")(view)
    documented: Callable[..., Response] = blp.response(
        200, RecommendationsSchema, description="JSON, or CSV with output_format=csv (text/csv)."
    )(view)
    return documented


@blp.route("/recommended_items")
class RecommendedItems(MethodView):
    @_answered
    @blp.arguments(RecommendQuerySchema, location="query", unknown=ma.RAISE, as_kwargs=True)
    def get(self, **params: Any) -> Response:
        """Top recommendations for one source, a list, or every source of the model."""
        ids = params.pop("source_id", None)
        if ids is not None:
            ids = [part for value in ids for part in value.split(",") if part]
            if not ids:
                raise _empty_ids()
        return _recommend(ids, None, **params)

    @_answered
    @blp.arguments(RecommendBodySchema, location="json", as_kwargs=True)
    def post(self, **params: Any) -> Response:
        """The same as GET with a JSON body; ``source_metadata`` cold-starts unseen sources."""
        ids = params.pop("source_id", None)
        metadata = params.pop("source_metadata", None)
        if ids is not None and (not ids or "" in ids):
            raise _empty_ids()
        if metadata is not None and ids is None:
            raise ValidationFailed(
                "source_metadata describes a source the model never saw: give its source_id too.",
                code="source_metadata_without_source_id",
            )
        return _recommend(ids, metadata, **params)


def _empty_ids() -> ValidationFailed:
    return ValidationFailed(
        "source_id is empty: give non-empty ids, or leave it out for every source.",
        code="empty_source_id",
    )


@dataclass(frozen=True)
class Serving:
    """Per-app serving state: the model cache and the threads bulk requests score on."""

    cache: ModelCache
    executor: ThreadPoolExecutor | None


def serving_state() -> Serving:
    """The app's serving state, built on first use (which also caps BLAS threads)."""
    state = current_app.extensions.get(SERVING_EXTENSION)
    if state is None:
        settings = services().settings
        serving.limit_blas_threads(settings.serve_blas_threads)
        threads = settings.serve_threads
        executor = (ThreadPoolExecutor(threads, thread_name_prefix="recsys-score")
                    if threads > 1 else None)
        state = current_app.extensions.setdefault(
            SERVING_EXTENSION, Serving(ModelCache(), executor))
        if state.executor is not executor and executor is not None:
            executor.shutdown(wait=False)  # another thread built it first
    return cast(Serving, state)


def _check_types(model: LoadedModel, source_type: str | None, target_type: str | None) -> None:
    for name, given, actual in (("source_type", source_type, model.source_type),
                                ("target_type", target_type, model.target_type)):
        if given is not None and given != actual:
            raise ValidationFailed(
                f"Model '{model.model_id}' recommends {model.target_type} for "
                f"{model.source_type}; {name} '{given}' is not one it knows.",
                code=f"unknown_{name}",
                details={name: given, f"model_{name}": actual},
            )


def _dedupe(ids: list[str]) -> list[str]:
    """Distinct ids in first-seen order, within the configured limits (422 beyond them)."""
    if any("\x00" in source_id for source_id in ids):
        # numpy's fixed-width strings drop trailing NULs: such an id could not be matched.
        raise ValidationFailed("A source_id contains a NUL character.",
                               code="invalid_source_id")
    longest = max(map(len, ids))
    if longest > MAX_ID_LENGTH:
        raise ValidationFailed(
            f"A source_id is {longest} characters long; ids are at most {MAX_ID_LENGTH}.",
            code="source_id_too_long",
            details={"limit": MAX_ID_LENGTH},
        )
    unique = list(dict.fromkeys(ids))
    limit = services().settings.max_recommend_source_ids
    if len(unique) > limit:
        raise ValidationFailed(
            f"At most {limit} source ids per request; leave source_id out to stream every "
            "source instead.",
            code="too_many_source_ids",
            details={"limit": limit, "given": len(unique)},
        )
    return unique


def _entity_lookup(tenant: str, model: LoadedModel) -> MetadataLookup:
    """Metadata of an unseen source from its newest uploaded entity record (capped per request)."""
    from shared.data.selection import latest_entity

    svc = services()
    budget = itertools.count()
    limit = svc.settings.max_cold_start_lookups

    def lookup(source_id: str) -> Mapping[str, Any] | None:
        if next(budget) >= limit:
            return None
        try:
            record = latest_entity(svc.storage, svc.redis, tenant, source_id)
        except ServiceError:
            raise
        except OSError as exc:
            raise DependencyUnavailable(
                f"Storage is unreachable while reading entity '{source_id}': {exc}",
                details={"dependency": "storage"},
            ) from exc
        except Exception:  # an unreadable batch must not fail the request: use popularity
            log.exception("reading the entity record of %r for cold start failed", source_id)
            return None
        if not record or (record.get("type") or "default") != model.source_type:
            return None
        metadata = record.get("metadata")
        return metadata if isinstance(metadata, dict) else None

    return lookup


def _recommend(
    ids: list[str] | None,
    source_metadata: Mapping[str, Any] | None,
    *,
    model_id: str,
    max_recommendations: int,
    output_format: str,
    exclude_seen: bool,
    source_type: str | None = None,
    target_type: str | None = None,
) -> Response:
    svc = services()
    tenant = current_tenant()
    state = serving_state()
    model = state.cache.get(svc.redis, svc.storage, tenant, model_id, svc.settings.data_dir)
    _check_types(model, source_type, target_type)
    k = max_recommendations
    blocks: Iterator[RecBlock]
    if ids is None:
        blocks = recommend_all(model, k, exclude_seen, state.executor)
    else:
        lookup: MetadataLookup
        if source_metadata is not None:
            def lookup(_source_id: str) -> Mapping[str, Any] | None:
                return source_metadata
        else:
            lookup = _entity_lookup(tenant, model)
        blocks = recommend_ids(model, _dedupe(ids), k, exclude_seen, lookup, state.executor)
    # Compute up to two blocks now, so errors still get a proper status and small
    # answers go out whole with a Content-Length; the rest is streamed.
    head = list(itertools.islice(blocks, 2))
    streamed = len(head) == 2
    writer = _csv_chunks if output_format == "csv" else _json_chunks
    chunks = writer(model, itertools.chain(head, blocks))
    mimetype = "text/csv" if output_format == "csv" else "application/json"
    if streamed:
        response = Response(stream_with_context(_logged(chunks, model)), mimetype=mimetype)
        response.headers["X-Accel-Buffering"] = "no"
    else:
        response = Response(b"".join(chunks), mimetype=mimetype)
    response.headers["X-Model-Version"] = str(model.version)
    return response


def _logged(chunks: Iterable[bytes], model: LoadedModel) -> Iterator[bytes]:
    """Log a failure in the middle of a stream (the status line is already sent)."""
    try:
        yield from chunks
    except Exception:
        log.exception("streaming recommendations of model %s failed", model.model_id)
        raise


def _json_chunks(model: LoadedModel, blocks: Iterable[RecBlock]) -> Iterator[bytes]:
    yield (b'{"model_id":' + orjson.dumps(model.model_id) + b',"version":'
           + str(model.version).encode() + b',"recommendations":[')
    sep = b""
    for block in blocks:
        if len(block.ranks) == 0:
            continue
        rows = [
            {"source_id": s, "target_id": t, "rank": r, "score": sc, "fallback": f}
            for s, t, r, sc, f in zip(
                block.source_ids.tolist(), block.target_ids.tolist(), block.ranks.tolist(),
                clean_scores(block.scores), block.fallback.tolist(), strict=True,
            )
        ]
        yield sep + orjson.dumps(rows)[1:-1]
        sep = b","
    yield b"]}"


def _csv_chunks(model: LoadedModel, blocks: Iterable[RecBlock]) -> Iterator[bytes]:
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(CSV_HEADER)
    yield buffer.getvalue().encode("utf-8")
    for block in blocks:
        if len(block.ranks) == 0:
            continue
        buffer.seek(0)
        buffer.truncate()
        out.writerows(zip(
            block.source_ids.tolist(), block.target_ids.tolist(), block.ranks.tolist(),
            clean_scores(block.scores), strict=True,
        ))
        yield buffer.getvalue().encode("utf-8")
