"""Stored schemas of batches, and the vectorised conversion of raw text columns to them.

Both upload forms (CSV files and JSON bodies) end here: a table of text
columns (empty string = empty cell) goes in, a table in the stored schema
comes out, together with the first problems found (row index, column,
message). Every check works on whole columns with pyarrow compute; the only
Python loop is over the *distinct* metadata strings (each parsed once with
orjson), which in practice are far fewer than the rows.

``type`` and ``metadata`` repeat a lot, so they are handled as dictionary
arrays (:data:`WRITE_SCHEMAS`): checks and rewrites (blank metadata to
``{}``, no type to ``default``) touch each distinct value once, and the
Parquet writer stores the dictionaries as they are instead of hashing every
cell again. pyarrow's CSV reader can build those dictionaries, and parse the
timestamps, while it parses (:mod:`shared.ingest.csv_reader`); :func:`convert` takes
text or such pre-typed columns alike. Files read back as plain strings
(:data:`SCHEMAS`): the writer does not store the Arrow schema.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from shared.data.batches import Kind

TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")

ENTITY_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("name", pa.string()),
        pa.field("metadata", pa.string(), nullable=False),
        pa.field("media_url", pa.string()),
    ]
)
INTERACTION_SCHEMA = pa.schema(
    [
        pa.field("type", pa.string(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("target_id", pa.string(), nullable=False),
        pa.field("timestamp", TIMESTAMP_TYPE),
        pa.field("metadata", pa.string(), nullable=False),
    ]
)
SCHEMAS: dict[Kind, pa.Schema] = {"entities": ENTITY_SCHEMA, "interactions": INTERACTION_SCHEMA}
COLUMNS: dict[Kind, tuple[str, ...]] = {k: tuple(s.names) for k, s in SCHEMAS.items()}
#: Columns handled as dictionary arrays from conversion to the Parquet writer.
DICTIONARY_COLUMNS = ("type", "metadata")
DICTIONARY_TYPE = pa.dictionary(pa.int32(), pa.string())
#: What :func:`convert` returns and the Parquet writer takes: :data:`SCHEMAS` with
#: :data:`DICTIONARY_COLUMNS` as dictionaries.
WRITE_SCHEMAS: dict[Kind, pa.Schema] = {
    kind: pa.schema([
        pa.field(f.name, DICTIONARY_TYPE, f.nullable) if f.name in DICTIONARY_COLUMNS else f
        for f in schema
    ])
    for kind, schema in SCHEMAS.items()
}
#: Columns that may not be empty, per kind.
ID_COLUMNS: dict[Kind, tuple[str, ...]] = {
    "entities": ("id",),
    "interactions": ("source_id", "target_id"),
}
DEFAULT_TYPE = "default"
#: Largest cell accepted, in bytes (a metadata object, a name, a URL): far above any sane value.
MAX_FIELD_BYTES = 1 << 20
#: Unix seconds above this are refused as probably milliseconds (docs/api.md).
MAX_UNIX_SECONDS = 1e11
#: How many problems a conversion reports at most.
MAX_PROBLEMS = 20
#: Longest id by default, in characters (``RECSYS_MAX_ID_LENGTH``): numpy's fixed-width
#: strings size every element to the longest id, so one huge id would blow up training.
DEFAULT_MAX_ID_LENGTH = 256
#: Control characters (C0, DEL, C1; NUL included), refused in ids: ids travel in URLs,
#: CSV and logs, where they would be cut or misread.
_CONTROL_RE = r"[\x00-\x1f\x7f-\x9f]"

_NUMERIC_RE = r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"
_OFFSET_RE = r"[T ][0-9:.,]+(Z|z|[+-][0-9]{2}(:?[0-9]{2})?)$"
_NUMERIC_PY = re.compile(_NUMERIC_RE)
# Python's "$" also matches before a final newline; "\Z" only at the very end.
_OFFSET_PY = re.compile(_OFFSET_RE[:-1] + r"\Z")


@dataclass(frozen=True, order=True)
class Problem:
    """One bad cell: ``row`` is the 0-based data row (the header is not a row)."""

    row: int
    column: str
    message: str


def _first_rows(mask: pa.Array | pa.ChunkedArray, limit: int = MAX_PROBLEMS) -> list[int]:
    indices = pc.indices_nonzero(mask)
    return [int(i) for i in indices.slice(0, limit).to_pylist()]


def _bad_positions(
    values: pa.Array, convert: Callable[[pa.Array], Any], limit: int
) -> list[int]:
    """Positions where ``convert`` fails, found by bisection (O(k log n) vectorised calls)."""
    found: list[int] = []
    stack = [(0, len(values))]
    while stack and len(found) < limit:
        start, stop = stack.pop()
        try:
            convert(values.slice(start, stop - start))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            if stop - start == 1:
                found.append(start)
            else:
                mid = (start + stop) // 2
                stack.append((mid, stop))
                stack.append((start, mid))
    return found


def _cast_fine(values: pa.Array, tz: str | None) -> pa.Array:
    """Cast to microseconds; finer fractions (nanoseconds) are truncated, not refused."""
    try:
        return pc.cast(values, pa.timestamp("us", tz=tz))
    except pa.ArrowInvalid:
        nanos = pc.cast(values, pa.timestamp("ns", tz=tz))  # raises for what is really bad
        return pc.cast(nanos, pa.timestamp("us", tz=tz), safe=False)


def _cast_aware(values: pa.Array) -> pa.Array:
    return _cast_fine(values, "UTC")


def _cast_naive(values: pa.Array) -> pa.Array:
    return pc.cast(_cast_fine(values, None), TIMESTAMP_TYPE)


def _cast_seconds(values: pa.Array) -> pa.Array:
    seconds = pc.cast(pc.utf8_trim_whitespace(values), pa.float64())
    too_big = pc.greater(pc.abs(seconds), MAX_UNIX_SECONDS)
    if pc.any(too_big).as_py():
        raise ValueError("above 1e11")
    micros = pc.cast(pc.round(pc.multiply(seconds, 1e6)), pa.int64())
    return pc.cast(micros, TIMESTAMP_TYPE)


def parse_timestamps(text: pa.Array, column: str = "timestamp") -> tuple[pa.Array, list[Problem]]:
    """ISO-8601 (no offset = UTC) or Unix seconds to ``timestamp[us, UTC]``; "" gives null."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    empty = pc.equal(text, "")
    if pc.any(empty).as_py():
        text = pc.if_else(empty, pa.scalar(None, pa.string()), text)
    for convert in (_cast_aware, _cast_naive, _cast_seconds):  # one form throughout: fast
        try:
            return convert(text), []
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            pass
    # Mixed forms: split by form, convert each part, find bad cells by bisection.
    text = pc.utf8_trim_whitespace(text)
    present = pc.is_valid(text)
    numeric = pc.fill_null(pc.match_substring_regex(text, _NUMERIC_RE), False)
    offset = pc.fill_null(pc.match_substring_regex(text, _OFFSET_RE), False)
    aware = pc.and_(pc.invert(numeric), offset)
    naive = pc.and_(present, pc.invert(pc.or_(numeric, offset)))
    out = np.zeros(len(text), dtype=np.int64)
    problems: list[Problem] = []
    for mask, convert, why in (
        (numeric, _cast_seconds, "is not valid Unix seconds (a value above 1e11 is refused "
         "as probably milliseconds)"),
        (aware, _cast_aware, "is not an ISO-8601 timestamp"),
        (naive, _cast_naive, "is not an ISO-8601 timestamp or Unix seconds"),
    ):
        positions = pc.indices_nonzero(mask)
        if len(positions) == 0:
            continue
        part = pc.take(text, positions)
        try:
            converted = convert(part)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
            for pos in _bad_positions(part, convert, MAX_PROBLEMS):
                row = int(positions[pos].as_py())
                problems.append(Problem(row, column, f"{part[pos].as_py()!r} {why}"))
            continue
        out[positions.to_numpy()] = pc.cast(converted, pa.int64()).to_numpy(zero_copy_only=False)
    problems.sort()
    valid = present.to_numpy(zero_copy_only=False)
    result = pa.array(out, type=pa.int64(), mask=~valid).cast(TIMESTAMP_TYPE)
    return result, problems[:MAX_PROBLEMS]


def parse_timestamp_value(value: Any) -> datetime:
    """One timestamp (ISO-8601 or Unix seconds) as an aware UTC datetime; ValueError if bad."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("a timestamp is an ISO-8601 string or Unix seconds")
    text = str(value) if not isinstance(value, str) else value
    if not text.strip():
        raise ValueError("a timestamp may not be empty")
    if isinstance(value, float) and not np.isfinite(value):
        raise ValueError("a timestamp must be finite")
    parsed, problems = parse_timestamps(pa.array([text], pa.string()))
    if problems:
        raise ValueError(problems[0].message)
    moment: datetime = parsed[0].as_py()
    return moment.astimezone(UTC)


def as_dictionary(col: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
    """``col`` as one dictionary array (text is encoded; chunks must share a dictionary)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    if col.type != DICTIONARY_TYPE:
        col = col.cast(DICTIONARY_TYPE)
    return col


def _rows_with(col: pa.DictionaryArray, positions: list[int]) -> list[int]:
    """The first rows whose value is one of the dictionary ``positions``."""
    mask = pc.is_in(col.indices, value_set=pa.array(positions, col.indices.type))
    return _first_rows(mask)


def _rewrite(col: pa.DictionaryArray, values: list[str]) -> pa.DictionaryArray:
    """``col`` with its dictionary's values replaced by ``values`` (kept distinct)."""
    distinct = list(dict.fromkeys(values))
    if len(distinct) == len(values):
        return pa.DictionaryArray.from_arrays(col.indices, pa.array(values, pa.string()))
    where = {v: i for i, v in enumerate(distinct)}
    remap = pa.array([where[v] for v in values], col.indices.type)
    return pa.DictionaryArray.from_arrays(pc.take(remap, col.indices),
                                          pa.array(distinct, pa.string()))


def _normalise_metadata(col: pa.DictionaryArray) -> tuple[pa.DictionaryArray, list[Problem]]:
    """Validate each distinct metadata string once; empty and blank cells become ``"{}"``."""
    values = col.dictionary.to_pylist()
    bad: dict[int, str] = {}  # dictionary position -> why
    blank = False
    for position, text in enumerate(values):
        if text.strip() == "":
            values[position] = "{}"
            blank = True
            continue
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            bad[position] = f"metadata is not valid JSON ({exc})"
            continue
        if not isinstance(parsed, dict):
            bad[position] = f"metadata must be a JSON object, not {type(parsed).__name__}"
    if bad:  # one pass over the rows, however many distinct values are bad
        indices = col.indices
        return col, [Problem(row, "metadata", bad[indices[row].as_py()])
                     for row in _rows_with(col, list(bad))]
    return (_rewrite(col, values) if blank else col), []


def _default_type(col: pa.DictionaryArray) -> pa.DictionaryArray:
    """Empty types become :data:`DEFAULT_TYPE`."""
    values = col.dictionary.to_pylist()
    if "" not in values:
        return col
    return _rewrite(col, [v or DEFAULT_TYPE for v in values])


def _oversized(name: str, col: pa.Array) -> list[Problem]:
    """Cells of ``col`` larger than :data:`MAX_FIELD_BYTES` (a dictionary's values checked once)."""
    values = col.dictionary if pa.types.is_dictionary(col.type) else col
    if not len(values) or pc.max(pc.binary_length(values)).as_py() <= MAX_FIELD_BYTES:
        return []
    too_big = pc.greater(pc.binary_length(values), MAX_FIELD_BYTES)
    if pa.types.is_dictionary(col.type):
        rows = _rows_with(col, _first_rows(too_big, len(values)))
    else:
        rows = _first_rows(too_big)
    return [Problem(r, name, f"the cell is larger than {MAX_FIELD_BYTES} bytes") for r in rows]


def _bad_ids(name: str, col: pa.Array, max_length: int) -> list[Problem]:
    """Ids longer than ``max_length`` characters, or holding a control character."""
    problems: list[Problem] = []
    lengths = pc.utf8_length(col)
    if len(col) and pc.max(lengths).as_py() > max_length:
        for row in _first_rows(pc.greater(lengths, max_length)):
            problems.append(Problem(row, name, f"{name} is {lengths[row].as_py()} characters "
                                    f"long; ids are at most {max_length} characters"))
    control = pc.match_substring_regex(col, _CONTROL_RE)
    if pc.any(control).as_py():
        problems.extend(
            Problem(row, name, f"{name} contains a control character (such as NUL, tab or "
                    "a line break); ids may not")
            for row in _first_rows(control))
    return problems


def _timestamps(col: pa.Array) -> tuple[pa.Array, list[Problem]]:
    """The timestamp column as ``timestamp[us, UTC]``: text is parsed, a naive one is UTC."""
    if pa.types.is_timestamp(col.type):
        return pc.cast(col, TIMESTAMP_TYPE), []
    return parse_timestamps(col)


def _empty_to_null(col: pa.Array) -> pa.Array:
    empty = pc.equal(col, "")
    if not pc.any(empty).as_py():
        return col
    return pc.if_else(empty, pa.scalar(None, pa.string()), col)


def convert(kind: Kind, text: pa.Table, max_id_length: int = DEFAULT_MAX_ID_LENGTH
            ) -> tuple[pa.Table, list[Problem]]:
    """Columns of ``COLUMNS[kind]`` as text ("" for empty) to :data:`WRITE_SCHEMAS`.

    ``type`` and ``metadata`` may also come as dictionaries of text, and ``timestamp`` as
    timestamps already parsed (naive ones are UTC). Ids longer than ``max_id_length``
    characters, or holding control characters, are problems.
    """
    if any(pa.types.is_dictionary(text.schema.field(n).type) for n in DICTIONARY_COLUMNS):
        text = text.unify_dictionaries()
    problems: list[Problem] = []
    cols: dict[str, pa.Array] = {}
    for name in COLUMNS[kind]:
        col = text.column(name)
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        if name in DICTIONARY_COLUMNS:
            col = as_dictionary(col)
        if not pa.types.is_timestamp(col.type):
            problems.extend(_oversized(name, col))
        cols[name] = col
    for name in ID_COLUMNS[kind]:
        rows = _first_rows(pc.equal(cols[name], ""))
        problems.extend(Problem(r, name, f"{name} may not be empty") for r in rows)
        problems.extend(_bad_ids(name, cols[name], max_id_length))
    cols["type"] = _default_type(cols["type"])
    cols["metadata"], meta_problems = _normalise_metadata(cols["metadata"])
    problems.extend(meta_problems)
    if kind == "entities":
        cols["name"] = _empty_to_null(cols["name"])
        cols["media_url"] = _empty_to_null(cols["media_url"])
    else:
        cols["timestamp"], ts_problems = _timestamps(cols["timestamp"])
        problems.extend(ts_problems)
    problems.sort()
    if problems:
        return pa.table({}), problems[:MAX_PROBLEMS]
    schema = WRITE_SCHEMAS[kind]
    table = pa.Table.from_arrays([cols[n] for n in schema.names], schema=schema)
    return table, []


def empty_table(kind: Kind) -> pa.Table:
    """A table of ``kind`` with no rows."""
    return SCHEMAS[kind].empty_table()


def is_numeric_text(text: str) -> bool:
    """True when ``text`` reads as a number (Unix seconds) rather than an ISO-8601 string."""
    return bool(_NUMERIC_PY.fullmatch(text))


def is_offset_text(text: str) -> bool:
    """True when an ISO-8601 ``text`` ends in a UTC offset (``Z``, ``+02:00``)."""
    return bool(_OFFSET_PY.search(text))
