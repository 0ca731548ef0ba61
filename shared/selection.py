"""Which data a training run (or a /dataset summary) uses: tags, age cut and filters, resolved.

Consumed by the worker's dataset assembly and by ``GET``/``POST /dataset``, so
a user sees exactly what a training run would use. Filters are evaluated on
whole columns with pyarrow compute; ``metadata.<key>`` conditions parse each
*distinct* metadata string once (a Python loop per unique value, which is
unavoidable for JSON and far smaller than the row count in practice).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from shared.batches import BatchMeta, batches_with_any_tag, list_batches
from shared.columns import TIMESTAMP_TYPE, empty_table, parse_timestamp_value
from shared.errors import DependencyUnavailable, ValidationFailed
from shared.storage import Storage, batch_path

log = logging.getLogger(__name__)

OPS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "exists")
FIELDS = ("type", "id", "name", "timestamp", "source_id", "target_id")
METADATA_PREFIX = "metadata."
_COMPARE = {"gt": pc.greater, "gte": pc.greater_equal, "lt": pc.less, "lte": pc.less_equal}
#: Largest ``in``/``not_in`` list accepted in one condition.
MAX_IN_VALUES = 10_000
MAX_CONDITIONS = 100


@dataclass(frozen=True)
class Condition:
    """One filter condition: ``field`` ``op`` ``value`` (see API.md, data_filters)."""

    field: str
    op: str
    value: Any


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
                entity_filters = _conditions(filters.get("entities"), "entities", errors)
                interaction_filters = _conditions(
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
        raw = [t for t in raw.split(",")]
    if not isinstance(raw, list | tuple) or not all(
        isinstance(t, str) and t.strip() for t in raw
    ):
        errors["data_tags"] = "must be a list of non-empty strings"
        return None
    return tuple(dict.fromkeys(t.strip() for t in raw))


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not (
        isinstance(value, float) and value != value
    )


def _conditions(raw: Any, where: str, errors: dict[str, Any]) -> tuple[Condition, ...]:
    if raw is None:
        return ()
    key = f"data_filters.{where}"
    if not isinstance(raw, list):
        errors[key] = "must be a list of conditions"
        return ()
    if len(raw) > MAX_CONDITIONS:
        errors[key] = f"at most {MAX_CONDITIONS} conditions"
        return ()
    out: list[Condition] = []
    for i, cond in enumerate(raw):
        problem = _check_condition(cond)
        if problem:
            errors[f"{key}[{i}]"] = problem
            continue
        value = cond.get("value", True) if cond["op"] == "exists" else cond["value"]
        if isinstance(value, list):
            value = tuple(value)
        out.append(Condition(cond["field"], cond["op"], value))
    return tuple(out)


def _check_condition(cond: Any) -> str | None:
    if not isinstance(cond, Mapping):
        return 'a condition is an object {"field", "op", "value"}'
    unknown = set(cond) - {"field", "op", "value"}
    if unknown:
        return f"unknown keys {sorted(unknown)}"
    name, op = cond.get("field"), cond.get("op")
    if not isinstance(name, str) or not (
        name in FIELDS or (name.startswith(METADATA_PREFIX) and len(name) > len(METADATA_PREFIX))
    ):
        return f"field must be one of {', '.join(FIELDS)} or metadata.<key>"
    if op not in OPS:
        return f"op must be one of {', '.join(OPS)}"
    if op == "exists":
        value = cond.get("value", True)
        return None if isinstance(value, bool) else "exists takes true or false"
    if "value" not in cond:
        return f"{op} needs a value"
    value = cond["value"]
    values: list[Any]
    if op in ("in", "not_in"):
        if not isinstance(value, list) or len(value) > MAX_IN_VALUES:
            return f"{op} takes a list of at most {MAX_IN_VALUES} values"
        values = value
    else:
        values = [value]
    for item in values:
        if not _is_scalar(item):
            return "values are strings, numbers or booleans"
        if op in _COMPARE and isinstance(item, bool):
            return f"{op} compares strings or numbers"
        if name == "timestamp":
            try:
                parse_timestamp_value(item)
            except ValueError:
                return f"{item!r} is not an ISO-8601 timestamp or Unix seconds"
    return None


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


# -- filter evaluation ----------------------------------------------------------------------
def _const(n: int, value: bool) -> pa.Array:
    return pa.array(np.full(n, value, dtype=bool))


def _array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _py_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "num"
    return type(value).__name__


def _py_match(actual: Any, op: str, value: Any) -> bool:
    """One JSON value against a condition (types must agree; a mismatch never matches)."""
    kind = _py_kind(actual)
    if op in ("eq", "ne"):
        same = kind == _py_kind(value) and actual == value
        return same if op == "eq" else not same
    if op in ("in", "not_in"):
        found = any(kind == _py_kind(v) and actual == v for v in value)
        return found if op == "in" else not found
    if kind != _py_kind(value) or kind not in ("num", "str"):
        return False
    return bool({"gt": actual > value, "gte": actual >= value, "lt": actual < value,
                 "lte": actual <= value}[op])


def _metadata_mask(col: pa.Array, key: str, cond: Condition) -> pa.Array:
    uniques = pc.unique(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
    results: list[bool | None] = []
    for text in uniques.to_pylist():
        parsed = orjson.loads(text) if text is not None else None
        actual = parsed.get(key) if isinstance(parsed, dict) else None
        if cond.op == "exists":
            results.append((actual is not None) == cond.value)
        elif actual is None:
            results.append(cond.op in ("ne", "not_in"))
        else:
            results.append(_py_match(actual, cond.op, cond.value))
    lookup = pa.array(results, pa.bool_())
    return pc.take(lookup, pc.index_in(col, value_set=uniques, skip_nulls=False))


def _column_mask(col: pa.ChunkedArray | pa.Array, cond: Condition) -> pa.Array:
    n = len(col)
    present = pc.is_valid(col)
    if cond.op == "exists":
        return present if cond.value else pc.invert(present)
    is_time = pa.types.is_timestamp(col.type)
    values = list(cond.value) if cond.op in ("in", "not_in") else [cond.value]
    if is_time:
        typed = [pa.scalar(parse_timestamp_value(v), TIMESTAMP_TYPE) for v in values]
    else:
        typed = [pa.scalar(v, pa.string()) for v in values if isinstance(v, str)]
    negative = cond.op in ("ne", "not_in")
    if cond.op in ("in", "not_in"):
        value_set = pa.array([s.as_py() for s in typed], col.type)
        mask = pc.fill_null(pc.is_in(col, value_set=value_set), False)
        return pc.invert(mask) if negative else mask
    if not typed:  # type mismatch: never equal, never comparable
        return _const(n, negative)
    if cond.op == "eq":
        return pc.fill_null(pc.equal(col, typed[0]), False)
    if cond.op == "ne":
        return pc.fill_null(pc.not_equal(col, typed[0]), True)
    return pc.fill_null(_COMPARE[cond.op](col, typed[0]), False)


def filter_mask(table: pa.Table, conditions: Sequence[Condition]) -> pa.Array:
    """True for rows meeting every condition (API.md semantics for absent fields)."""
    mask: pa.Array = _const(table.num_rows, True)
    for cond in conditions:
        if cond.field.startswith(METADATA_PREFIX):
            key = cond.field[len(METADATA_PREFIX):]
            part = _metadata_mask(table.column("metadata"), key, cond)
        elif cond.field in table.column_names:
            part = _column_mask(table.column(cond.field), cond)
        else:  # the record kind lacks this field altogether
            part = _const(table.num_rows, cond.op in ("ne", "not_in") or (
                cond.op == "exists" and cond.value is False))
        mask = pc.and_(mask, part)
    return mask


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
    storage: Storage, r: redis.Redis, tenant: str, spec: DataSpec, now: datetime
) -> SelectedData:
    """Resolve ``spec`` against the tenant's batches as of ``now``."""
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
        drop = _const(interactions.num_rows, False)
        for role, etype in (("source_id", spec.source_type), ("target_id", spec.target_type)):
            col = interactions.column(role)
            ids = pc.unique(col)
            ids = ids.filter(pc.invert(pc.is_in(ids, value_set=described)))
            implied_table = pa.table({
                "id": ids, "type": pa.array([etype] * len(ids), pa.string()),
                "name": pa.nulls(len(ids), pa.string()),
                "metadata": pa.nulls(len(ids), pa.string()),
            })
            bad_implied = _array(ids).filter(
                _array(pc.invert(filter_mask(implied_table, spec.entity_filters))))
            bad = pa.concat_arrays([_array(removed), _array(bad_implied)])
            drop = pc.or_(drop, pc.is_in(col, value_set=bad))
        interactions = interactions.filter(pc.invert(drop))
    for role in ("source_id", "target_id"):
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
    metas = [m for m in list_batches(r, tenant) if m.kind == "entities"]
    for meta in reversed(metas):  # newest first; stops at the first batch describing it
        path = storage.full_path(batch_path(tenant, meta.batch_id))
        try:
            table = pq.read_table(path, filesystem=storage.fs, filters=[("id", "==", entity_id)])
        except FileNotFoundError:
            continue
        except (OSError, pa.ArrowException) as exc:
            raise DependencyUnavailable(
                f"Storage could not read batch {meta.batch_id}: {exc}",
                details={"dependency": "storage", "batch_id": meta.batch_id},
            ) from exc
        if table.num_rows:
            row = table.slice(table.num_rows - 1).to_pylist()[0]
            row["metadata"] = orjson.loads(row["metadata"]) if row["metadata"] else {}
            return dict(row)
    return None
