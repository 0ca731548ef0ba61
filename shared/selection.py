"""Which data a training run (or a /dataset summary) uses: tags, age cut and filters, resolved.

Consumed by the worker's dataset assembly and by ``GET``/``POST /dataset``, so
a user sees exactly what a training run would use. Filters are evaluated on
whole columns with pyarrow compute; ``metadata.<key>`` conditions parse each
*distinct* metadata string once (a Python loop per unique value, which is
unavoidable for JSON and far smaller than the row count in practice); see
:mod:`shared.filters`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from shared.batches import BatchMeta, batch_ids_newest_first, batches_with_any_tag
from shared.columns import TIMESTAMP_TYPE, empty_table
from shared.errors import DependencyUnavailable, ValidationFailed
from shared.filters import Condition, as_array, const_mask, filter_mask, parse_conditions
from shared.storage import Storage, batch_path

__all__ = ["Condition", "DataSpec", "SelectedData", "filter_mask", "latest_entity",
           "select_data", "summarise"]

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
def _read(storage: Storage, tenant: str, meta: BatchMeta) -> pa.Table | None:
    path = storage.full_path(batch_path(tenant, meta.batch_id))
    try:
        return pq.read_table(path, filesystem=storage.fs)
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


def select_data(
    storage: Storage, r: redis.Redis, tenant: str, spec: DataSpec, now: datetime,
    count_implied: bool = True,
) -> SelectedData:
    """Resolve ``spec`` against the tenant's batches as of ``now``.

    ``count_implied=False`` leaves ``implied`` empty (training does not use it).
    """
    metas = batches_with_any_tag(r, tenant, spec.data_tags)
    used: list[BatchMeta] = []
    entity_tables: list[pa.Table] = []
    interaction_tables: list[pa.Table] = []
    for meta in metas:  # one read per batch (a small table)
        table = _read(storage, tenant, meta)
        if table is None:
            continue
        used.append(meta)
        (entity_tables if meta.kind == "entities" else interaction_tables).append(table)
    entities = _newest_per_id(entity_tables)
    interactions = (
        pa.concat_tables(interaction_tables).combine_chunks()
        if interaction_tables else empty_table("interactions")
    )
    if spec.maximum_interaction_age_days is not None and interactions.num_rows:
        cutoff = pa.scalar(now - timedelta(days=spec.maximum_interaction_age_days),
                           TIMESTAMP_TYPE)
        ts = interactions.column("timestamp")
        keep = pc.or_(pc.is_null(ts), pc.fill_null(pc.greater_equal(ts, cutoff), False))
        interactions = interactions.filter(keep)
    if spec.interaction_filters and interactions.num_rows:
        interactions = interactions.filter(filter_mask(interactions, spec.interaction_filters))
    implied: dict[str, int] = {}
    described = entities.column("id")
    if spec.entity_filters:
        kept = filter_mask(entities, spec.entity_filters)
        removed = entities.filter(pc.invert(kept)).column("id")
        entities = entities.filter(kept)
        drop = const_mask(interactions.num_rows, False)
        for role, etype in (("source_id", spec.source_type), ("target_id", spec.target_type)):
            col = interactions.column(role)
            ids = pc.unique(col)
            ids = ids.filter(pc.invert(pc.is_in(ids, value_set=described)))
            implied_table = pa.table({
                "id": ids, "type": pa.repeat(pa.scalar(etype, pa.string()), len(ids)),
                "name": pa.nulls(len(ids), pa.string()),
                "metadata": pa.nulls(len(ids), pa.string()),
            })
            bad_implied = as_array(ids).filter(
                as_array(pc.invert(filter_mask(implied_table, spec.entity_filters))))
            bad = pa.concat_arrays([as_array(removed), as_array(bad_implied)])
            drop = pc.or_(drop, pc.is_in(col, value_set=bad))
        interactions = interactions.filter(pc.invert(drop))
    for role in ("source_id", "target_id") if count_implied else ():
        ids = pc.unique(interactions.column(role))
        implied[role] = int(pc.sum(pc.invert(pc.is_in(ids, value_set=described))).as_py() or 0)
    return SelectedData(
        batch_ids=[m.batch_id for m in used],
        entities=entities,
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


def summarise(selected: SelectedData) -> dict[str, Any]:
    """The /dataset body: totals of what a run with the same selection would use."""
    inter = selected.interactions
    ts = inter.column("timestamp")
    bounds = pc.min_max(ts)
    return {
        "batch_count": len(selected.batch_ids),
        "bytes": selected.batch_bytes,
        "batch_ids": list(selected.batch_ids),
        "entities": {"total": selected.entities.num_rows,
                     "by_type": _counts_by_type(selected.entities)},
        "interactions": {"total": inter.num_rows, "by_type": _counts_by_type(inter)},
        "sources": int(pc.count_distinct(inter.column("source_id")).as_py()),
        "targets": int(pc.count_distinct(inter.column("target_id")).as_py()),
        "implied_entities": {
            "sources": selected.implied.get("source_id", 0),
            "targets": selected.implied.get("target_id", 0),
        },
        "timestamps": {
            "min": _iso(bounds["min"].as_py()),
            "max": _iso(bounds["max"].as_py()),
            "without_timestamp": int(ts.null_count),
        },
    }


def latest_entity(
    storage: Storage, r: redis.Redis, tenant: str, entity_id: str
) -> dict[str, Any] | None:
    """The newest uploaded record of one entity across all the tenant's batches, or None."""
    for batch_id in batch_ids_newest_first(r, tenant, "entities"):  # stops at the first hit
        path = storage.full_path(batch_path(tenant, batch_id))
        try:
            table = pq.read_table(path, filesystem=storage.fs, filters=[("id", "==", entity_id)])
        except FileNotFoundError:
            continue
        except (OSError, pa.ArrowException) as exc:
            raise DependencyUnavailable(
                f"Storage could not read batch {batch_id}: {exc}",
                details={"dependency": "storage", "batch_id": batch_id},
            ) from exc
        if table.num_rows:
            row = table.slice(table.num_rows - 1).to_pylist()[0]
            row["metadata"] = orjson.loads(row["metadata"]) if row["metadata"] else {}
            return dict(row)
    return None
