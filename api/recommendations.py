"""Recommendations from trained models: ``GET /recommended_items`` and its ``POST`` form.

The view validates with marshmallow (the same schemas document OpenAPI),
resolves the serving version through the process's :class:`ModelCache` (so
a new version is served at once), and writes JSON or CSV. Answers for a few
sources are built whole; bigger ones, and every-source requests, are
streamed block by block as one valid JSON document or CSV file, so a model
with a million sources never builds its whole answer in memory.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import marshmallow as ma
from flask import Response, current_app
from flask.views import MethodView

from api.auth import current_tenant, require
from api.context import services
from api.errors import ErrorBodySchema
from api.parsing import Blueprint
from api.recommendation_schemas import (
    CSV_DOC,
    NOT_READY,
    RecommendationsSchema,
    RecommendBodySchema,
    RecommendQuerySchema,
)
from api.shaping import Extras, csv_chunks, json_chunks, shape_from
from api.streaming import block_rows, csv_document, json_document, plain_csv_rows, stream_answer
from shared.errors import DependencyUnavailable, ServiceError, ValidationFailed
from shared.models import serving
from shared.models.blocks import RecBlock, recommend_all, recommend_ids
from shared.models.serving import LoadedModel, MetadataLookup, ModelCache
from shared.models.shaped import Shape, recommend_shaped, resolve
from shared.models.target_index import TargetIndex, TargetIndexCache, has_target_features

log = logging.getLogger(__name__)

blp = Blueprint("recommendations", __name__, description="Recommendations from trained models.")

#: Key of the per-app :class:`Serving` state in ``app.extensions``.
SERVING_EXTENSION = "recsys_serving"
#: Longest source id a request may name (ids become fixed-width numpy strings per block).
MAX_ID_LENGTH = 1024
CSV_HEADER = ("source_id", "target_id", "rank", "score")


def answered(bp: Blueprint, schema: type[ma.Schema], doc: dict[str, Any]
             ) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """What a serving endpoint's GET and POST share: the ``recommend`` scope and the
    documented answers (JSON ``schema``, or CSV as ``doc`` shows it)."""

    def decorate(view: Callable[..., Response]) -> Callable[..., Response]:
        view = require("recommend")(view)
        view = bp.doc(responses=doc)(view)
        view = bp.alt_response(422, schema=ErrorBodySchema, description="Invalid parameters.")(
            view)
        view = bp.alt_response(409, schema=ErrorBodySchema, description=NOT_READY)(view)
        view = bp.alt_response(404, schema=ErrorBodySchema, description="Unknown model_id.")(
            view)
        documented: Callable[..., Response] = bp.response(
            200, schema, description="JSON, or CSV with output_format=csv (text/csv)."
        )(view)
        return documented

    return decorate


_answered = answered(blp, RecommendationsSchema, CSV_DOC)


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
    """Per-app serving state: the model cache, the threads bulk requests score on, and the
    target indexes request-time filters use."""

    cache: ModelCache
    executor: ThreadPoolExecutor | None
    indexes: TargetIndexCache = field(default_factory=TargetIndexCache)


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


def dedupe_ids(ids: list[str]) -> list[str]:
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


def entity_lookup(tenant: str, model: LoadedModel,
                   entity_type: str | None = None) -> MetadataLookup:
    """Metadata of an unseen entity (default: a source) from its newest uploaded record.

    Capped per request; a record of another type than ``entity_type`` is ignored.
    """
    wanted = entity_type or model.source_type
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
        if not record or (record.get("type") or "default") != wanted:
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
    **options: Any,
) -> Response:
    svc = services()
    tenant = current_tenant()
    state = serving_state()
    shape = shape_from(options)
    extras = Extras(shape.new_targets, bool(options.get("explain")),
                    bool(options.get("with_entities")))
    model = state.cache.get(svc.redis, svc.storage, tenant, model_id, svc.settings.data_dir)
    _check_types(model, source_type, target_type)
    k = max_recommendations
    lookup: MetadataLookup | None = None
    if ids is not None:
        ids = dedupe_ids(ids)
        if source_metadata is not None:
            def lookup(_source_id: str) -> Mapping[str, Any] | None:
                return source_metadata
        else:
            lookup = entity_lookup(tenant, model)
    if not shape.plain or extras != Extras():
        return _shaped(model, ids, lookup, shape, extras, k, exclude_seen, output_format)
    blocks: Iterator[RecBlock]
    if ids is None:
        blocks = recommend_all(model, k, exclude_seen, state.executor)
    else:
        blocks = recommend_ids(model, ids, k, exclude_seen, lookup, state.executor)
    def write(all_blocks: Iterable[RecBlock]) -> Iterator[bytes]:
        if output_format == "csv":
            return csv_document(CSV_HEADER, (plain_csv_rows(b) for b in all_blocks))
        return json_document(model, "recommendations", (block_rows(b) for b in all_blocks))

    return stream_answer(model, blocks, write, output_format)


def target_index(model: LoadedModel) -> TargetIndex:
    """The target index of ``model`` (built on first use, rebuilt when entities change)."""
    svc = services()
    return serving_state().indexes.get(svc.storage, svc.redis, model)


def _shaped(model: LoadedModel, ids: list[str] | None, lookup: MetadataLookup | None,
            shape: Shape, extras: Extras, k: int, exclude_seen: bool,
            output_format: str) -> Response:
    """Recommendations with filters, candidate lists, new targets or decorated rows."""
    if shape.new_targets and not has_target_features(model):
        raise ValidationFailed(
            f"Model '{model.model_id}' learned no target metadata features, so it cannot score "
            "targets without interactions; train it with use_metadata_features (and target "
            "entities with metadata), or leave new_targets out.",
            code="no_target_features", details={"model_id": model.model_id},
        )
    index = target_index(model)
    cand = resolve(model, index, shape)
    blocks = recommend_shaped(model, index, cand, ids, k, exclude_seen, lookup,
                              serving_state().executor)
    unknown = cand.unknown_ids if shape.include_ids is not None else None

    def write(all_blocks: Iterable[Any]) -> Iterator[bytes]:
        if output_format == "csv":
            return csv_chunks(model, index, extras, all_blocks)
        return json_chunks(model, index, extras, all_blocks, unknown)

    return stream_answer(model, blocks, write, output_format)

