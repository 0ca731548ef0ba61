"""Try it: a model's recommendations for one source, with entity names and pictures.

Scoring is the serving path of ``/recommended_items`` (the app's model cache,
``recommend_ids``, the same cold-start lookup); names and ``media_url`` come from
each target's newest entity record, as ``with_entities`` defines them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from api.context import services
from api.recommendations import _entity_lookup, serving_state
from shared.data.selection import latest_entity
from shared.errors import ValidationFailed
from shared.models.blocks import clean_scores, recommend_ids
from shared.models.serving import MetadataLookup

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


def recommend(tenant: str, model_id: str, source_id: str, k: int,
              metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Rows of ``source_id``'s top ``k`` with each target's name and picture."""
    svc = services()
    state = serving_state()
    model = state.cache.get(svc.redis, svc.storage, tenant, model_id, svc.settings.data_dir)
    lookup: MetadataLookup
    if metadata is not None:
        def lookup(_source_id: str) -> Mapping[str, Any] | None:
            return metadata
    else:
        lookup = _entity_lookup(tenant, model)
    rows: list[dict[str, Any]] = []
    for block in recommend_ids(model, [source_id], min(k, MAX_ROWS), True, lookup, None):
        for target, rank, score, fallback in zip(
                block.target_ids.tolist(), block.ranks.tolist(), clean_scores(block.scores),
                block.fallback.tolist(), strict=True):
            record = latest_entity(svc.storage, svc.redis, tenant, target)
            rows.append({"target_id": target, "rank": rank, "score": score,
                         "fallback": fallback, "name": (record or {}).get("name") or "",
                         "media_url": _picture(record)})
    return {"model_id": model.model_id, "version": model.version, "rows": rows,
            "source_type": model.source_type, "target_type": model.target_type}
