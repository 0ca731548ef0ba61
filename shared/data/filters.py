"""Filter conditions of a data selection: validation, and evaluation on whole columns.

A condition is ``{"field", "op", "value"}`` (docs/api.md, ``data_filters``). Evaluation
uses pyarrow compute on whole columns; ``metadata.<key>`` conditions parse each
*distinct* metadata string once (a Python loop per unique value, unavoidable for
JSON and far smaller than the row count in practice). A field a record lacks
never matches: ``exists`` is false, comparisons are false, ``ne`` and ``not_in``
are true.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from shared.ingest.columns import TIMESTAMP_TYPE, parse_timestamp_value

OPS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "exists")
FIELDS = ("type", "id", "name", "timestamp", "source_id", "target_id")
METADATA_PREFIX = "metadata."
_COMPARE = {"gt": pc.greater, "gte": pc.greater_equal, "lt": pc.less, "lte": pc.less_equal}
#: Largest ``in``/``not_in`` list accepted in one condition.
MAX_IN_VALUES = 10_000
MAX_CONDITIONS = 100
#: Longest string value and field name in a condition, in characters.
MAX_VALUE_LENGTH = 1024
MAX_FIELD_LENGTH = 256



@dataclass(frozen=True)
class Condition:
    """One filter condition: ``field`` ``op`` ``value`` (see docs/api.md, data_filters)."""

    field: str
    op: str
    value: Any



def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not (
        isinstance(value, float) and value != value
    )


def parse_conditions(raw: Any, where: str, errors: dict[str, Any]) -> tuple[Condition, ...]:
    """Validate a list of conditions; problems go into ``errors`` keyed by position."""
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
    if isinstance(name, str) and len(name) > MAX_FIELD_LENGTH:
        return f"field is at most {MAX_FIELD_LENGTH} characters"
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
        if isinstance(item, str) and len(item) > MAX_VALUE_LENGTH:
            return f"a string value is at most {MAX_VALUE_LENGTH} characters"
        if op in _COMPARE and isinstance(item, bool):
            return f"{op} compares strings or numbers"
        if name == "timestamp":
            try:
                parse_timestamp_value(item)
            except ValueError:
                return f"{item!r} is not an ISO-8601 timestamp or Unix seconds"
    return None



def const_mask(n: int, value: bool) -> pa.Array:
    """``n`` copies of ``value`` as a boolean array."""
    return pa.array(np.full(n, value, dtype=bool))


def as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array."""
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
        return const_mask(n, negative)
    if cond.op == "eq":
        return pc.fill_null(pc.equal(col, typed[0]), False)
    if cond.op == "ne":
        return pc.fill_null(pc.not_equal(col, typed[0]), True)
    return pc.fill_null(_COMPARE[cond.op](col, typed[0]), False)


def filter_mask(table: pa.Table, conditions: Sequence[Condition]) -> pa.Array:
    """True for rows meeting every condition (docs/api.md semantics for absent fields)."""
    mask: pa.Array = const_mask(table.num_rows, True)
    for cond in conditions:
        if cond.field.startswith(METADATA_PREFIX):
            key = cond.field[len(METADATA_PREFIX):]
            part = _metadata_mask(table.column("metadata"), key, cond)
        elif cond.field in table.column_names:
            part = _column_mask(table.column(cond.field), cond)
        else:  # the record kind lacks this field altogether
            part = const_mask(table.num_rows, cond.op in ("ne", "not_in") or (
                cond.op == "exists" and cond.value is False))
        mask = pc.and_(mask, part)
    return mask

