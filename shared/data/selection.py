"""Which data a training run (or a /dataset summary) uses: tags, age cut and filters, resolved.

Consumed by the worker's dataset assembly (:func:`select_data`) and by
``GET``/``POST /dataset`` (:func:`summarise_data`), so a user sees exactly what a
training run would use. Every rule but "newest entity version wins" applies to
each interaction batch alone (the age cut and interaction filters row by row,
entity filters by id), so interaction batches are read and filtered one at a
time: a run holds only what it keeps, and a summary holds one batch and the
distinct ids, whatever the data's size. Filters are evaluated on whole columns
with pyarrow compute; ``metadata.<key>`` conditions parse each *distinct*
metadata string once (a Python loop per unique value, which is unavoidable for
JSON and far smaller than the row count in practice); see :mod:`shared.data.filters`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from shared.data import entity_index
from shared.data.batches import MAX_TAG_LENGTH, BatchMeta, batches_with_any_tag
from shared.data.filters import Condition, as_array, const_mask, filter_mask, parse_conditions
from shared.errors import DependencyUnavailable, ValidationFailed
from shared.ingest.columns import TIMESTAMP_TYPE, empty_table
from shared.storage import Storage, batch_path

#: Most tags one data selection may name.
MAX_DATA_TAGS = 256

__all__ = ["Condition", "DataSpec", "SelectedData", "count_interactions", "filter_mask",
           "latest_entity", "select_data", "summarise_data"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSpec:
    """What data a run uses, validated from a request body."""

    data_tags: tuple[str, ...] | None = None
    maximum_interaction_age_days: int | None = None
    entity_filters: tuple[Condition, ...] = ()
    interaction_filters: tuple[Condition, ...] = ()
    source_type: str = "user"
    target_type: str = "item"

    @classmethod
    def from_request(cls, body: Mapping[str, Any]) -> DataSpec:
        """Validate the data-selection keys of a request body; other keys are ignored."""
        errors: dict[str, Any] = {}
        tags = _tags(body.get("data_tags"), errors)
        age = body.get("maximum_interaction_age_days")
        if age is not None and (isinstance(age, bool) or not isinstance(age, int) or age < 1):
            errors["maximum_interaction_age_days"] = "must be a positive integer"
            age = None
        entity_filters: tuple[Condition, ...] = ()
        interaction_filters: tuple[Condition, ...] = ()
        filters = body.get("data_filters")
        if filters is not None:
            if not isinstance(filters, Mapping):
                errors["data_filters"] = (
                    'must be an object {"entities": [...], "interactions": [...]}'
                )
            else:
                unknown = sorted(set(filters) - {"entities", "interactions"})
                if unknown:
                    errors["data_filters"] = f"unknown keys {unknown}; use entities, interactions"
                entity_filters = parse_conditions(filters.get("entities"), "entities", errors)
                interaction_filters = parse_conditions(
                    filters.get("interactions"), "interactions", errors
                )
        types = {}
        for name in ("source_type", "target_type"):
            value = body.get(name, "user" if name == "source_type" else "item")
            if not isinstance(value, str) or not value.strip() or len(value) > 128:
                errors[name] = "must be a non-empty string of at most 128 characters"
            types[name] = value if isinstance(value, str) else ""
        if errors:
            raise ValidationFailed(
                "The data selection is invalid: "
                + "; ".join(f"{k}: {v}" for k, v in list(errors.items())[:3]),
                code="invalid_data_selection",
                details={"fields": errors},
            )
        return cls(
            data_tags=tags,
            maximum_interaction_age_days=age,
            entity_filters=entity_filters,
            interaction_filters=interaction_filters,
            source_type=types["source_type"],
            target_type=types["target_type"],
        )


def _tags(raw: Any, errors: dict[str, Any]) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, list | tuple) or not all(
        isinstance(t, str) and t.strip() for t in raw
    ):
        errors["data_tags"] = "must be a list of non-empty strings"
        return None
    if len(raw) > MAX_DATA_TAGS or any(len(t) > MAX_TAG_LENGTH for t in raw):
        errors["data_tags"] = (f"at most {MAX_DATA_TAGS} tags of at most {MAX_TAG_LENGTH} "
                               "characters")
        return None
    if not raw:  # would select nothing; almost certainly not what was meant
        errors["data_tags"] = "must not be empty; leave it out to use every batch"
        return None
    return tuple(dict.fromkeys(t.strip() for t in raw))


@dataclass
class SelectedData:
    """The resolved data of a spec: batches used, newest entity versions, interactions."""

    batch_ids: list[str]
    entities: pa.Table
    interactions: pa.Table
    #: Stored bytes of the batches used.
    batch_bytes: int = 0
    #: Counts of ids used by interactions that no entity batch describes, per role.
    implied: dict[str, int] = field(default_factory=dict)


# -- reading ---------------------------------------------------------------------------------
def _read(storage: Storage, tenant: str, meta: BatchMeta,
          columns: Sequence[str] | None = None) -> pa.Table | None:
    path = storage.full_path(batch_path(tenant, meta.batch_id))
    try:
        return pq.read_table(path, filesystem=storage.fs,
                             columns=list(columns) if columns is not None else None)
    except FileNotFoundError:
        log.warning("batch %s of tenant %s vanished while reading (deleted?)", meta.batch_id,
                    tenant)
        return None
    except (OSError, pa.ArrowException) as exc:
        raise DependencyUnavailable(
            f"Storage could not read batch {meta.batch_id}: {exc}",
            details={"dependency": "storage", "batch_id": meta.batch_id},
        ) from exc


def _newest_per_id(tables: list[pa.Table]) -> pa.Table:
    """Concatenate oldest first and keep the last row of each id (newest batch, later row)."""
    if not tables:
        return empty_table("entities")
    combined = pa.concat_tables(tables).combine_chunks()
    order = pa.array(np.arange(combined.num_rows, dtype=np.int64))
    with_order = combined.append_column("_ord", order)
    last = with_order.group_by("id", use_threads=False).aggregate([("_ord", "max")])
    keep = pc.sort_indices(last.column("_ord_max"))
    rows = pc.take(last.column("_ord_max"), keep)
    return combined.take(rows)


@dataclass
class _Entities:
    """The entity side of a selection, and what it means for interactions."""

    #: Newest version of each id, entity filters applied.
    table: pa.Table
    #: Every id an entity batch describes (before filters).
    described: pa.Array
    #: Described ids the entity filters remove.
    removed: pa.Array


def _entities(storage: Storage, tenant: str, metas: Sequence[BatchMeta], spec: DataSpec,
              vanished: set[str]) -> _Entities:
    tables = []
    for meta in metas:
        table = _read(storage, tenant, meta)
        if table is None:
            vanished.add(meta.batch_id)
        else:
            tables.append(table)
    entities = _newest_per_id(tables)
    described = as_array(entities.column("id"))
    removed = pa.array([], pa.string())
    if spec.entity_filters:
        kept = filter_mask(entities, spec.entity_filters)
        removed = as_array(entities.filter(pc.invert(kept)).column("id"))
        entities = entities.filter(kept)
    return _Entities(entities, described, removed)


def _keep_interactions(table: pa.Table, spec: DataSpec, now: datetime,
                       entities: _Entities) -> pa.Table:
    """The rows of one interaction batch the selection keeps."""
    if spec.maximum_interaction_age_days is not None and table.num_rows:
        cutoff = pa.scalar(now - timedelta(days=spec.maximum_interaction_age_days),
                           TIMESTAMP_TYPE)
        ts = table.column("timestamp")
        keep = pc.or_(pc.is_null(ts), pc.fill_null(pc.greater_equal(ts, cutoff), False))
        table = table.filter(keep)
    if spec.interaction_filters and table.num_rows:
        table = table.filter(filter_mask(table, spec.interaction_filters))
    if spec.entity_filters and table.num_rows:
        # an id no entity batch describes stands for an entity of the role's type, with no
        # name or metadata: it is dropped when the filters would drop such an entity
        drop = const_mask(table.num_rows, False)
        for role, etype in (("source_id", spec.source_type), ("target_id", spec.target_type)):
            col = table.column(role)
            ids = pc.unique(col)
            ids = ids.filter(pc.invert(pc.is_in(ids, value_set=entities.described)))
            implied_table = pa.table({
                "id": ids, "type": pa.repeat(pa.scalar(etype, pa.string()), len(ids)),
                "name": pa.nulls(len(ids), pa.string()),
                "metadata": pa.nulls(len(ids), pa.string()),
            })
            bad_implied = as_array(ids).filter(
                as_array(pc.invert(filter_mask(implied_table, spec.entity_filters))))
            bad = pa.concat_arrays([entities.removed, as_array(bad_implied)])
            drop = pc.or_(drop, pc.is_in(col, value_set=bad))
        table = table.filter(pc.invert(drop))
    return table


def _selection(
    storage: Storage, r: redis.Redis, tenant: str, spec: DataSpec, now: datetime,
    columns: Sequence[str] | None = None,
) -> tuple[list[BatchMeta], _Entities, Iterator[pa.Table], set[str]]:
    """The batches of ``spec``, its entities, and its interactions batch by batch.

    The iterator reads one batch at a time (``columns`` only) and yields what the
    selection keeps of it; a batch deleted meanwhile is skipped and its id added to the
    returned set, complete once the iterator is exhausted.
    """
    metas = batches_with_any_tag(r, tenant, spec.data_tags)
    vanished: set[str] = set()
    entities = _entities(storage, tenant, [m for m in metas if m.kind == "entities"], spec,
                         vanished)

    def interactions() -> Iterator[pa.Table]:
        for meta in metas:
            if meta.kind != "entities":
                table = _read(storage, tenant, meta, columns)
                if table is None:
                    vanished.add(meta.batch_id)
                else:
                    yield _keep_interactions(table, spec, now, entities)

    return metas, entities, interactions(), vanished


def _implied(ids: pa.Array | pa.ChunkedArray, described: pa.Array) -> int:
    """How many of the distinct ``ids`` no entity batch describes."""
    return int(pc.sum(pc.invert(pc.is_in(ids, value_set=described))).as_py() or 0)


def select_data(
    storage: Storage, r: redis.Redis, tenant: str, spec: DataSpec, now: datetime,
    count_implied: bool = True,
) -> SelectedData:
    """Resolve ``spec`` against the tenant's batches as of ``now``.

    ``count_implied=False`` leaves ``implied`` empty (training does not use it).
    """
    metas, entities, batches, vanished = _selection(storage, r, tenant, spec, now)
    tables = list(batches)
    interactions = (pa.concat_tables(tables).combine_chunks() if tables
                    else empty_table("interactions"))
    del tables
    implied: dict[str, int] = {}
    for role in ("source_id", "target_id") if count_implied else ():
        implied[role] = _implied(pc.unique(interactions.column(role)), entities.described)
    used = [m for m in metas if m.batch_id not in vanished]
    return SelectedData(
        batch_ids=[m.batch_id for m in used],
        entities=entities.table,
        interactions=interactions,
        batch_bytes=sum(m.bytes for m in used),
        implied=implied,
    )


def _counts_by_type(table: pa.Table) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    counts = pc.value_counts(table.column("type"))
    pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(),
                strict=True)
    return dict(sorted(pairs))


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


class _Totals:
    """The /dataset figures of interactions, added up batch by batch."""

    def __init__(self) -> None:
        self.rows = 0
        self.by_type: dict[str, int] = {}
        self.ids = {"source_id": pa.array([], pa.string()), "target_id": pa.array([], pa.string())}
        self.first: datetime | None = None
        self.last: datetime | None = None
        self.without_timestamp = 0

    def add(self, table: pa.Table) -> None:
        """Count the rows of ``table`` in."""
        if not table.num_rows:
            return
        self.rows += table.num_rows
        for kind, count in _counts_by_type(table).items():
            self.by_type[kind] = self.by_type.get(kind, 0) + count
        for role, seen in self.ids.items():
            both = pa.chunked_array([seen, pc.unique(table.column(role))], pa.string())
            self.ids[role] = as_array(pc.unique(both))
        ts = table.column("timestamp")
        bounds = pc.min_max(ts)
        for name, value in (("first", bounds["min"].as_py()), ("last", bounds["max"].as_py())):
            current = getattr(self, name)
            if value is not None and (current is None or (value < current if name == "first"
                                                          else value > current)):
                setattr(self, name, value)
        self.without_timestamp += ts.null_count

    def summary(self, metas: Sequence[BatchMeta], entities: _Entities) -> dict[str, Any]:
        """The /dataset body."""
        return {
            "batch_count": len(metas),
            "bytes": sum(m.bytes for m in metas),
            "batch_ids": [m.batch_id for m in metas],
            "entities": {"total": entities.table.num_rows,
                         "by_type": _counts_by_type(entities.table)},
            "interactions": {"total": self.rows, "by_type": dict(sorted(self.by_type.items()))},
            "sources": len(self.ids["source_id"]),
            "targets": len(self.ids["target_id"]),
            "implied_entities": {
                "sources": _implied(self.ids["source_id"], entities.described),
                "targets": _implied(self.ids["target_id"], entities.described),
            },
            "timestamps": {
                "min": _iso(self.first),
                "max": _iso(self.last),
                "without_timestamp": self.without_timestamp,
            },
        }


#: Interaction columns a summary reads when no interaction filter needs the others.
_SUMMARY_COLUMNS = ("type", "source_id", "target_id", "timestamp")


def count_interactions(storage: Storage, r: redis.Redis, tenant: str, spec: DataSpec,
                       now: datetime) -> int:
    """How many interactions a run with ``spec`` would use (read batch by batch)."""
    columns = None if spec.interaction_filters else _SUMMARY_COLUMNS
    _, _, batches, _ = _selection(storage, r, tenant, spec, now, columns)
    return sum(table.num_rows for table in batches)


def summarise_data(storage: Storage, r: redis.Redis, tenant: str, spec: DataSpec,
                   now: datetime) -> dict[str, Any]:
    """The /dataset body: totals of what a run with the same selection would use.

    Reads interaction batches one at a time, and only the columns it needs.
    """
    columns = None if spec.interaction_filters else _SUMMARY_COLUMNS
    metas, entities, batches, vanished = _selection(storage, r, tenant, spec, now, columns)
    totals = _Totals()
    for table in batches:
        totals.add(table)
    return totals.summary([m for m in metas if m.batch_id not in vanished], entities)


def latest_entity(
    storage: Storage, r: redis.Redis, tenant: str, entity_id: str
) -> dict[str, Any] | None:
    """The newest uploaded record of one entity across all the tenant's batches, or None.

    Opens only batches that hold the id (:mod:`shared.data.entity_index`).
    """
    return entity_index.INDEX.latest(storage, r, tenant, entity_id)
