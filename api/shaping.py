"""Request shaping shared by ``/recommended_items`` and ``/similar_items``.

:func:`shape_from` validates ``filters``, ``include_ids``, ``exclude_ids`` and
``new_targets`` (422 with a JSON error for each kind of bad value) into a
:class:`~shared.models.shaped.Shape`; :func:`shaped_chunks` writes the rows of
shaped recommendation blocks, with the optional ``new_target``, ``because``,
``name`` and ``media_url`` fields, as JSON or CSV (the CSV adds one column per
option asked for, after the contract's four).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from api.parsing import check_depth
from api.streaming import block_rows, csv_document, json_document
from shared.errors import ValidationFailed
from shared.models.serving import LoadedModel
from shared.models.shaped import Shape, ShapedBlock, because
from shared.models.target_index import TargetIndex, parse_target_filters

#: Most ids ``include_ids`` or ``exclude_ids`` may hold.
MAX_SHAPE_IDS = 10_000
#: Longest target id a request may name.
MAX_ID_LENGTH = 1024


def _filters(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed(f"filters is not valid JSON: {exc}", code="invalid_filters",
                               details={"fields": {"filters": "not valid JSON"}}) from exc
    check_depth(parsed)
    return parsed


def split_ids(values: list[str] | None, name: str) -> tuple[str, ...] | None:
    """Ids of a query or body list (comma-separated values split), checked; None if absent."""
    if values is None:
        return None
    ids = tuple(part for value in values for part in value.split(",") if part)
    if any("\x00" in i for i in ids):
        raise ValidationFailed(f"An id in {name} contains a NUL character.",
                               code=f"invalid_{name}")
    if ids and max(map(len, ids)) > MAX_ID_LENGTH:
        raise ValidationFailed(f"An id in {name} is longer than {MAX_ID_LENGTH} characters.",
                               code=f"invalid_{name}", details={"limit": MAX_ID_LENGTH})
    if len(ids) > MAX_SHAPE_IDS:
        raise ValidationFailed(f"{name} holds {len(ids)} ids; at most {MAX_SHAPE_IDS}.",
                               code=f"too_many_{name}",
                               details={"limit": MAX_SHAPE_IDS, "given": len(ids)})
    return ids


def shape_from(params: dict[str, Any]) -> Shape:
    """Pop the shaping options out of validated ``params`` into a :class:`Shape`."""
    raw_filters = params.pop("filters", None)
    conditions = parse_target_filters(_filters(raw_filters)) if raw_filters is not None else ()
    include = split_ids(params.pop("include_ids", None), "include_ids")
    if include is not None and not include:
        raise ValidationFailed("include_ids is empty: give target ids, or leave it out.",
                               code="empty_include_ids")
    exclude = split_ids(params.pop("exclude_ids", None), "exclude_ids") or ()
    new_targets = params.pop("new_targets", "exclude") == "include"
    return Shape(conditions, include, exclude, new_targets)


@dataclass(frozen=True)
class Extras:
    """Which optional fields each recommendation row carries."""

    new_targets: bool = False
    explain: bool = False
    with_entities: bool = False


def _rows(model: LoadedModel, index: TargetIndex | None, extras: Extras,
          block: ShapedBlock) -> list[dict[str, Any]]:
    rows = block_rows(block.rec)
    if extras.new_targets:
        for row, col in zip(rows, block.cols.tolist(), strict=True):
            row["new_target"] = col >= model.n_targets
    if extras.explain and index is not None:
        reasons = because(model, index.normed(extras.new_targets), block.source_rows,
                          block.cols)
        for row, reason in zip(rows, reasons, strict=True):
            row["because"] = reason
    if extras.with_entities and index is not None:
        names, urls = index.entities(block.cols)
        for row, name, url in zip(rows, names, urls, strict=True):
            row["name"], row["media_url"] = name, url
    return rows


def json_chunks(model: LoadedModel, index: TargetIndex | None, extras: Extras,
                blocks: Iterable[ShapedBlock], unknown_ids: list[str] | None,
                key: str = "recommendations") -> Iterator[bytes]:
    """One JSON document: model, version, rows, then ``unknown_ids`` when asked for."""
    rows = (_rows(model, index, extras, block) for block in blocks if len(block.cols))
    return json_document(model, key, rows, unknown_ids)


def csv_chunks(model: LoadedModel, index: TargetIndex | None, extras: Extras,
               blocks: Iterable[ShapedBlock]) -> Iterator[bytes]:
    """CSV with the contract's header plus one column per option asked for."""
    header = ["source_id", "target_id", "rank", "score"]
    header += ["new_target"] * extras.new_targets + ["because"] * extras.explain
    header += ["name", "media_url"] * extras.with_entities

    def cells(row: Mapping[str, Any]) -> list[Any]:
        values = [row[h] for h in header]
        if extras.explain:
            at = header.index("because")
            values[at] = ";".join(values[at])
        return ["" if c is None else str(c).lower() if isinstance(c, bool) else c
                for c in values]

    return csv_document(header, ([cells(row) for row in _rows(model, index, extras, block)]
                                 for block in blocks if len(block.cols)))


def metadata_lookup(metadata: Mapping[str, Any] | None) -> Any:
    """A lookup answering ``metadata`` for every id (the request's own metadata)."""
    def lookup(_id: str) -> Mapping[str, Any] | None:
        return metadata
    return lookup
