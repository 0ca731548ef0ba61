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

__all__ = ["Condition", "DataSpec", "SelectedData", "SelectedEntities", "filter_mask",
           "implied_count", "latest_entity", "select_data", "selected_batches"]

log = logging.getLogger(__name__)


#: Largest ``maximum_interaction_age_days`` a request may give (100 years).
MAX_INTERACTION_AGE_DAYS = 36_500
#: Most ``data_tags`` a request may give.
MAX_DATA_TAGS = 256


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
        if age is not None and (isinstance(age, bool) or not isinstance(age, int)
                                or not 1 <= age <= MAX_INTERACTION_AGE_DAYS):
            errors["maximum_interaction_age_days"] = (
                f"must be a whole number of days from 1 to {MAX_INTERACTION_AGE_DAYS}")
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
class SelectedEntities:
    """The entity side of a selection, and what it means for interactions."""

    #: Newest version of each id, entity filters applied.
    table: pa.Table
    #: Every id an entity batch describes (before filters).
    described: pa.Array
    #: Described ids the entity filters remove.
    removed: pa.Array


def _entities(storage: Storage, tenant: str, metas: Sequence[BatchMeta], spec: DataSpec,
              vanished: set[str]) -> SelectedEntities:
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
    return SelectedEntities(entities, described, removed)


def _cutoff(now: datetime, days: int | None) -> datetime | None:
    """The oldest moment kept, or None when nothing is cut (no age, or one past year 1)."""
    if days is None:
        return None
    try:
        return now - timedelta(days=days)
    except OverflowError:  # older than datetime can say: every interaction is young enough
        return None


def _keep_interactions(table: pa.Table, spec: DataSpec, now: datetime,
                       entities: SelectedEntities) -> pa.Table:
    """The rows of one interaction batch the selection keeps."""
    cut = _cutoff(now, spec.maximum_interaction_age_days)
    if cut is not None and table.num_rows:
        cutoff = pa.scalar(cut, TIMESTAMP_TYPE)
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


def selected_batches(
    storage: Storage, r: redis.Redis, tenant: str, spec: DataSpec, now: datetime,
    columns: Sequence[str] | None = None,
) -> tuple[list[BatchMeta], SelectedEntities, Iterator[pa.Table], set[str]]:
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


def implied_count(ids: pa.Array | pa.ChunkedArray, described: pa.Array) -> int:
    """How many of the distinct ``ids`` no entity batch describes."""
    return int(pc.sum(pc.invert(pc.is_in(ids, value_set=described))).as_py() or 0)


def select_data(
    storage: Storage, r: redis.Redis, tenant: str, spec: DataSpec, now: datetime,
    count_implied: bool = True,
) -> SelectedData:
    """Resolve ``spec`` against the tenant's batches as of ``now``.

    ``count_implied=False`` leaves ``implied`` empty (training does not use it).
    """
    metas, entities, batches, vanished = selected_batches(storage, r, tenant, spec, now)
    tables = list(batches)
    interactions = (pa.concat_tables(tables).combine_chunks() if tables
                    else empty_table("interactions"))
    del tables
    implied: dict[str, int] = {}
    for role in ("source_id", "target_id") if count_implied else ():
        implied[role] = implied_count(pc.unique(interactions.column(role)), entities.described)
    used = [m for m in metas if m.batch_id not in vanished]
    return SelectedData(
        batch_ids=[m.batch_id for m in used],
        entities=entities.table,
        interactions=interactions,
        batch_bytes=sum(m.bytes for m in used),
        implied=implied,
    )


def latest_entity(
    storage: Storage, r: redis.Redis, tenant: str, entity_id: str
) -> dict[str, Any] | None:
    """The newest uploaded record of one entity across all the tenant's batches, or None.

    Opens only batches that hold the id (:mod:`shared.data.entity_index`).
    """
    return entity_index.INDEX.latest(storage, r, tenant, entity_id)
