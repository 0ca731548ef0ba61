"""Property tests: what is uploaded (as CSV or as JSON) is what is stored.

CSV files are also converted in tiny pieces (a few dozen bytes), so that pieces are cut
inside quoted values and between lines of one record, and the answer must not change.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.config import Settings
from shared.ingest import segments as csv_segments
from shared.ingest.csv_reader import prepare_csv
from shared.ingest.store import Prepared, prepare_json, workspace

# Any text a spreadsheet could hold (no NUL, no lone surrogates: neither survives UTF-8 CSV).
cell = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=12)
# Ids: no control characters (category Cc), which uploads refuse.
ident = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
json_scalar = st.none() | st.booleans() | st.integers(-10**9, 10**9) | cell | st.floats(
    allow_nan=False, allow_infinity=False, width=32)
metadata = st.dictionaries(cell, json_scalar | st.lists(cell, max_size=3), max_size=4)
moment = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1),
                      timezones=st.just(UTC))

ENTITY_COLUMNS = ["id", "type", "name", "metadata", "media_url"]
INTERACTION_COLUMNS = ["type", "source_id", "target_id", "timestamp", "metadata"]


@st.composite
def timestamp_cell(draw: st.DrawFn) -> tuple[str, datetime | None]:
    """A timestamp written in one of the accepted forms, and the instant it means."""
    when = draw(moment)
    form = draw(st.sampled_from(["z", "offset", "naive", "space", "seconds", "empty"]))
    if form == "empty":
        return "", None
    if form == "seconds":
        when = when.replace(microsecond=0)
        return str(int(when.timestamp())), when
    if form == "offset":
        tz = timezone(timedelta(minutes=draw(st.integers(-12 * 60, 14 * 60))))
        return when.astimezone(tz).isoformat(), when
    text = when.replace(tzinfo=None).isoformat()
    if form == "space":
        text = text.replace("T", " ")
    return text + ("Z" if form == "z" else ""), when


def _csv(header: list[str], rows: list[list[str]], crlf: bool, bom: bool) -> bytes:
    buf = io.StringIO()
    # With "\n" line ends the csv module would leave a lone "\r" unquoted, which every CSV
    # reader takes for a line break: quote everything then (empty cells become "").
    writer = csv.writer(buf, lineterminator="\r\n" if crlf else "\n",
                        quoting=csv.QUOTE_MINIMAL if crlf else csv.QUOTE_ALL)
    writer.writerow(header)
    writer.writerows(rows)
    return (b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode("utf-8")


#: Bytes per piece: the default, or tiny ones.
piece_bytes = st.sampled_from([0, 24, 100])


@contextlib.contextmanager
def _pieces(size: int) -> Iterator[None]:
    """Convert CSV files in pieces of ``size`` bytes (0: the default)."""
    default = csv_segments.SEGMENT_BYTES
    csv_segments.SEGMENT_BYTES = size or default
    try:
        yield
    finally:
        csv_segments.SEGMENT_BYTES = default


def _prepare(tmp: Path, data: bytes, piece: int = 0) -> list[dict[str, Any]]:
    src = tmp / "in.csv"
    src.write_bytes(data)
    with _pieces(piece):
        result = prepare_csv(src, "in.csv", tmp / "out.parquet", Settings(data_dir=tmp))
    assert isinstance(result, Prepared), result
    rows: list[dict[str, Any]] = pq.read_table(result.path).to_pylist()
    return rows


SLOW = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@SLOW
@given(
    rows=st.lists(st.tuples(ident, cell, cell, st.none() | metadata, cell), min_size=1,
                  max_size=8),
    order=st.permutations(ENTITY_COLUMNS), crlf=st.booleans(), bom=st.booleans(),
    piece=piece_bytes,
)
def test_entities_csv_round_trip(tmp_path: Path, rows: list[Any], order: list[str],
                                 crlf: bool, bom: bool, piece: int) -> None:
    given_rows = [dict(zip(ENTITY_COLUMNS, (i, t, n, "" if m is None else orjson.dumps(m)
                                            .decode(), u), strict=True))
                  for i, t, n, m, u in rows]
    data = _csv(order, [[r[c] for c in order] for r in given_rows], crlf, bom)
    with workspace(Settings(data_dir=tmp_path)) as tmp:
        stored = _prepare(tmp, data, piece)
    assert len(stored) == len(rows)
    for got, (i, t, n, m, u) in zip(stored, rows, strict=True):
        assert got["id"] == i
        assert got["type"] == (t or "default")
        assert got["name"] == (n or None)
        assert orjson.loads(got["metadata"]) == (m or {})
        assert got["media_url"] == (u or None)


@SLOW
@given(
    rows=st.lists(st.tuples(cell, ident, ident, timestamp_cell(), st.none() | metadata),
                  min_size=1, max_size=8),
    crlf=st.booleans(),
    piece=piece_bytes,
)
def test_interactions_csv_round_trip(tmp_path: Path, rows: list[Any], crlf: bool,
                                     piece: int) -> None:
    cells = [[t, s, g, ts[0], "" if m is None else orjson.dumps(m).decode()]
             for t, s, g, ts, m in rows]
    with workspace(Settings(data_dir=tmp_path)) as tmp:
        stored = _prepare(tmp, _csv(INTERACTION_COLUMNS, cells, crlf, bom=False), piece)
    for got, (t, s, g, ts, m) in zip(stored, rows, strict=True):
        assert (got["type"], got["source_id"], got["target_id"]) == (t or "default", s, g)
        assert got["timestamp"] == ts[1]
        assert orjson.loads(got["metadata"]) == (m or {})


@SLOW
@given(
    entities=st.lists(st.fixed_dictionaries(
        {"id": ident}, optional={"type": cell, "name": cell | st.none(), "metadata": metadata,
                                 "media_url": cell}), max_size=6),
    interactions=st.lists(st.fixed_dictionaries(
        {"source_id": ident, "target_id": ident},
        optional={"type": cell, "metadata": metadata,
                  "timestamp": moment.map(lambda d: d.isoformat())}), max_size=6),
)
def test_json_round_trip(tmp_path: Path, entities: list[dict[str, Any]],
                         interactions: list[dict[str, Any]]) -> None:
    body = {"entities": entities, "interactions": interactions}
    if not entities and not interactions:
        return
    with workspace(Settings(data_dir=tmp_path)) as tmp:
        prepared, _ = prepare_json(body, tmp, Settings(data_dir=tmp))
        tables = {p.kind: pq.read_table(p.path).to_pylist() for p in prepared}
    for sent, got in zip(entities, tables.get("entities", []), strict=True):
        assert got["id"] == sent["id"] and got["type"] == (sent.get("type") or "default")
        assert got["name"] == (sent.get("name") or None)
        assert orjson.loads(got["metadata"]) == sent.get("metadata", {})
    for sent, got in zip(interactions, tables.get("interactions", []), strict=True):
        assert (got["source_id"], got["target_id"]) == (sent["source_id"], sent["target_id"])
        expected = datetime.fromisoformat(sent["timestamp"]) if "timestamp" in sent else None
        assert got["timestamp"] == expected


@SLOW
@given(
    before=st.lists(st.tuples(ident, cell), max_size=6),
    after=st.lists(st.tuples(ident, cell), max_size=3),
    bad=st.sampled_from(["id", "metadata"]),
    crlf=st.booleans(),
    piece=piece_bytes,
)
def test_errors_point_at_the_physical_line_a_record_starts_on(
    tmp_path: Path, before: list[Any], after: list[Any], bad: str, crlf: bool, piece: int
) -> None:
    end = "\r\n" if crlf else "\n"
    # names may hold line breaks (quoted), so records can span several physical lines; a lone
    # "\r" ends a line too (as for pyarrow), so leave those out to count lines by "\n"
    rows = [[i.replace("\r", "") or "x", "", n.replace("\r", ""), "", ""] for i, n in before]
    bad_row = ["", "", "x", "", ""] if bad == "id" else ["b", "", "y\nz", "[1]", ""]
    text = _csv(ENTITY_COLUMNS, rows, crlf, bom=False).decode()
    expected_line = text.count("\n") + 1
    text += _csv(ENTITY_COLUMNS, [bad_row] + [[i, "", n, "", ""] for i, n in after], crlf,
                 bom=False).decode().split(end, 1)[1]
    with workspace(Settings(data_dir=tmp_path)) as tmp:
        src = tmp / "in.csv"
        src.write_bytes(text.encode())
        with _pieces(piece):
            result = prepare_csv(src, "in.csv", tmp / "out.parquet", Settings(data_dir=tmp))
    assert isinstance(result, list)
    assert [(e["line"], e["column"]) for e in result] == [(expected_line, bad)]
