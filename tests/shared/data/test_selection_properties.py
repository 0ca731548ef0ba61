"""Property test: the vectorised filters agree with a plain, row-by-row reading of docs/api.md."""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.data.filters import OPS, Condition, filter_mask

text = st.text(alphabet="abcé1 ", max_size=3)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(-3, 3, width=16),
                   text)
keys = st.sampled_from(["a", "b"])
record = st.fixed_dictionaries({
    "id": text.filter(bool), "type": st.sampled_from(["user", "item", "default"]),
    "name": st.none() | text,
    "metadata": st.dictionaries(keys, scalar | st.lists(text, max_size=2), max_size=2),
})
field = st.sampled_from(["id", "type", "name", "timestamp", "metadata.a", "metadata.b"])


@st.composite
def condition(draw: st.DrawFn) -> Condition:
    op = draw(st.sampled_from(OPS))
    if op == "exists":
        value: Any = draw(st.booleans())
    elif op in ("in", "not_in"):
        value = tuple(draw(st.lists(scalar.filter(lambda v: v is not None), max_size=3)))
    elif op in ("gt", "gte", "lt", "lte"):
        value = draw(st.integers(-3, 3) | text)
    else:
        value = draw(scalar.filter(lambda v: v is not None))
    return Condition(draw(field), op, value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "num"
    return type(value).__name__


def _same(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and a == b


def reference(row: dict[str, Any], cond: Condition) -> bool:
    """docs/api.md's rule, one record at a time."""
    if cond.field.startswith("metadata."):
        actual = row["metadata"].get(cond.field[len("metadata."):])
    else:
        actual = row.get(cond.field)  # entities have no timestamp: absent
    if cond.op == "exists":
        return (actual is not None) == cond.value
    if actual is None:
        return cond.op in ("ne", "not_in")
    if cond.op == "eq":
        return _same(actual, cond.value)
    if cond.op == "ne":
        return not _same(actual, cond.value)
    if cond.op == "in":
        return any(_same(actual, v) for v in cond.value)
    if cond.op == "not_in":
        return not any(_same(actual, v) for v in cond.value)
    if _kind(actual) != _kind(cond.value) or _kind(actual) not in ("num", "str"):
        return False
    return bool({"gt": actual > cond.value, "gte": actual >= cond.value,
                 "lt": actual < cond.value, "lte": actual <= cond.value}[cond.op])


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(record, max_size=12), conds=st.lists(condition(), min_size=1, max_size=3))
def test_filter_mask_matches_the_rule(rows: list[dict[str, Any]],
                                      conds: list[Condition]) -> None:
    table = pa.table({
        "id": pa.array([r["id"] for r in rows], pa.string()),
        "type": pa.array([r["type"] for r in rows], pa.string()),
        "name": pa.array([r["name"] for r in rows], pa.string()),
        "metadata": pa.array([orjson.dumps(r["metadata"]).decode() for r in rows], pa.string()),
        "media_url": pa.nulls(len(rows), pa.string()),
    })
    got = filter_mask(table, conds).to_pylist()
    expected = [all(reference(r, c) for c in conds) for r in rows]
    assert got == expected
