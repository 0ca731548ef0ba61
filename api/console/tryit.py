"""Try it: a model's recommendations for one source, and the items most like one item,
with entity names and pictures.

Scoring is the serving path of ``/recommended_items`` (the app's model cache,
``recommend_ids``, the same cold-start lookup) and of ``/similar_items`` (the target
index, ``resolve``, ``similar_blocks``); names and ``media_url`` come from each
target's newest entity record, as ``with_entities`` defines them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from api.context import services
from api.recommendations import entity_lookup, serving_state, target_index
from api.shaping import shape_from
from shared.data.selection import latest_entity
from shared.errors import ValidationFailed
from shared.models.blocks import RecBlock, clean_scores, recommend_ids
from shared.models.serving import LoadedModel, MetadataLookup
from shared.models.shaped import resolve
from shared.models.similar import similar_blocks

#: Most rows the form asks for.
MAX_ROWS = 50
_SAFE_URL = re.compile(r"^https?://", re.IGNORECASE)


def parse_metadata(text: str) -> dict[str, Any] | None:
    """Metadata typed into the form: a JSON object, or ``key: value`` lines; None if blank.

    A line's value that reads as a number is a number; ``a, b`` is a list of strings.
    """
    text = text.strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValidationFailed(f"The metadata is not valid JSON: {exc}",
                                   code="invalid_metadata") from exc
        if not isinstance(value, dict):
            raise ValidationFailed("The metadata is a JSON object.", code="invalid_metadata")
        return value
    result: dict[str, Any] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, raw = line.partition(":") if ":" in line else line.partition("=")
        if not sep or not key.strip():
            raise ValidationFailed(
                f"Line {number} of the metadata is not 'key: value'.", code="invalid_metadata")
        result[key.strip()] = _value(raw.strip())
    return result


def _value(raw: str) -> Any:
    try:
        return float(raw) if any(c in raw for c in ".eE") else int(raw)
    except ValueError:
        pass
    if "," in raw:
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def _picture(record: Mapping[str, Any] | None) -> str | None:
    url = (record or {}).get("media_url")
    return url if isinstance(url, str) and _SAFE_URL.match(url) else None


def _model(tenant: str, model_id: str) -> LoadedModel:
    svc = services()
    return serving_state().cache.get(svc.redis, svc.storage, tenant, model_id,
                                     svc.settings.data_dir)


def _rows(tenant: str, blocks: Iterable[RecBlock]) -> list[dict[str, Any]]:
    """One row per result with the target's name and picture."""
    svc = services()
    rows: list[dict[str, Any]] = []
    for block in blocks:
        for target, rank, score, fallback in zip(
                block.target_ids.tolist(), block.ranks.tolist(), clean_scores(block.scores),
                block.fallback.tolist(), strict=True):
            record = latest_entity(svc.storage, svc.redis, tenant, target)
            rows.append({"target_id": target, "rank": rank, "score": score,
                         "fallback": fallback, "name": (record or {}).get("name") or "",
                         "media_url": _picture(record)})
    return rows


def _answer(model: LoadedModel, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model_id": model.model_id, "version": model.version, "rows": rows,
            "source_type": model.source_type, "target_type": model.target_type}


def recommend(tenant: str, model_id: str, source_id: str, k: int,
              metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Rows of ``source_id``'s top ``k`` with each target's name and picture."""
    model = _model(tenant, model_id)
    lookup: MetadataLookup
    if metadata is not None:
        def lookup(_source_id: str) -> Mapping[str, Any] | None:
            return metadata
    else:
        lookup = entity_lookup(tenant, model)
    blocks = recommend_ids(model, [source_id], min(k, MAX_ROWS), True, lookup, None)
    return _answer(model, _rows(tenant, blocks))


def similar(tenant: str, model_id: str, target_id: str, k: int) -> dict[str, Any]:
    """The ``k`` targets most like ``target_id`` (``GET /similar_items``), with names and
    pictures; an unseen target is represented by its newest entity record's metadata."""
    model = _model(tenant, model_id)
    index = target_index(model)
    cand = resolve(model, index, shape_from({}))
    lookup = entity_lookup(tenant, model, model.target_type)
    blocks = similar_blocks(model, index, cand, [target_id], min(k, MAX_ROWS), lookup,
                            serving_state().executor)
    return _answer(model, _rows(tenant, blocks))
