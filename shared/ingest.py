"""Turning uploads (CSV files on disk, or a JSON body) into stored, registered batches.

The good case reads each CSV file once with pyarrow's streaming, multi-threaded
CSV reader, converts and validates every block with whole-column operations
(:mod:`shared.columns`), and writes Parquet row groups as it goes, so memory
stays bounded by the block and row-group sizes, not the file size. Only when a
file fails does :mod:`shared.csv_errors` read it again to find exact lines.

A request is stored whole or not at all (:func:`store`): every file is
converted into a temporary Parquet file first; only when all of them are good
are they moved into storage, and only when all files are in place is the
metadata recorded in one Redis ``MULTI``. Any failure removes what was written.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq
import redis

from shared.batches import KINDS, BatchMeta, Kind, iso_utc, new_batch_ids, record_batches
from shared.columns import COLUMNS, ID_COLUMNS, MAX_PROBLEMS, SCHEMAS, Problem, convert
from shared.config import Settings
from shared.csv_errors import BOM, scan
from shared.errors import PayloadTooLarge, ValidationFailed
from shared.storage import Storage, batch_path

log = logging.getLogger(__name__)

#: Bytes pyarrow parses per block (small blocks parallelise best); a record must fit in one.
BLOCK_SIZE = 1 << 20
#: Block size of the second attempt when a record is larger than :data:`BLOCK_SIZE`.
LARGE_BLOCK_SIZE = 64 << 20
#: Rows converted and written together (one Parquet row group).
ROW_GROUP_ROWS = 250_000
#: Longest header line read, in bytes.
MAX_HEADER_BYTES = 64 * 1024
PARQUET_COMPRESSION = "lz4"
#: Parquet options per kind: dictionaries only where values repeat a lot, statistics only
#: where readers filter (ids of entities for latest_entity, timestamps for the age cut).
PARQUET_OPTIONS: dict[Kind, dict[str, Any]] = {
    "entities": {"use_dictionary": ["type", "metadata"], "write_statistics": ["id"]},
    "interactions": {"use_dictionary": ["type", "metadata"], "write_statistics": ["timestamp"]},
}


def parquet_writer(path: Path, kind: Kind) -> pq.ParquetWriter:
    """A Parquet writer for a batch file of ``kind``."""
    return pq.ParquetWriter(path, SCHEMAS[kind], compression=PARQUET_COMPRESSION,
                            **PARQUET_OPTIONS[kind])


@dataclass
class Prepared:
    """A converted, validated batch waiting in a temporary Parquet file."""

    kind: Kind
    path: Path
    rows: int
    bytes: int
    source: str


#: Seconds after which a work directory left behind by a crashed process is removed.
STALE_WORKSPACE_SECONDS = 24 * 3600


def _remove_stale(root: Path) -> None:
    """Remove work directories a killed process left behind (a request never lasts a day)."""
    cutoff = time.time() - STALE_WORKSPACE_SECONDS
    for entry in root.iterdir():  # one per in-flight or abandoned upload: a short list
        with contextlib.suppress(OSError):
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def workspace(settings: Settings) -> Iterator[Path]:
    """A private temporary directory beside the storage (so moving into storage is a rename)."""
    root = settings.data_dir / "tmp" / "uploads"
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root)
    path = Path(tempfile.mkdtemp(dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _error(source: str, line: int | None, column: str | None, message: str) -> dict[str, Any]:
    return {"file": source, "line": line, "column": column, "message": message}


def row_errors(errors: list[dict[str, Any]]) -> ValidationFailed:
    """The 422 of a request with bad rows."""
    first = errors[0]
    where = f"{first['file']}" + (f", line {first['line']}" if first.get("line") else "")
    return ValidationFailed(
        f"The upload has invalid rows ({where}: {first['message']}); nothing was stored.",
        code="invalid_rows",
        details={"errors": errors[:MAX_PROBLEMS]},
    )


# -- CSV -------------------------------------------------------------------------------------
def read_header(path: Path, source: str) -> list[str]:
    """The header's column names (BOM stripped, whitespace trimmed, lower-cased)."""
    with open(path, "rb") as fh:
        first = fh.readline(MAX_HEADER_BYTES)
    if first.startswith(BOM):
        first = first[len(BOM):]
    if not first.strip():
        raise ValidationFailed(
            f"File {source!r} is empty; a CSV file starts with a header row.",
            code="empty_file",
            details={"errors": [_error(source, 1, None, "the file is empty")]},
        )
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationFailed(
            f"File {source!r} is not UTF-8 text.",
            code="invalid_rows",
            details={"errors": [_error(source, 1, None, "the header is not valid UTF-8 text")]},
        ) from exc
    names = next(csv.reader([text.rstrip("\r\n")]), [])
    return [n.strip().lower() for n in names]


def detect_kind(names: Sequence[str], source: str) -> Kind:
    """The kind a header names; 422 when it names neither kind, or both."""
    present = set(names)
    matches = [k for k in KINDS if set(COLUMNS[k]) <= present]
    if len(matches) == 1:
        kind = matches[0]
        dupes = sorted({n for n in COLUMNS[kind] if names.count(n) > 1})
        if dupes:
            raise ValidationFailed(
                f"File {source!r} names the column(s) {', '.join(dupes)} more than once.",
                code="duplicate_columns",
                details={"file": source, "columns": dupes},
            )
        return kind
    missing = {k: [c for c in COLUMNS[k] if c not in present] for k in KINDS}
    if matches:
        raise ValidationFailed(
            f"The header of {source!r} names the columns of both entities and interactions; "
            "upload them as separate files.",
            code="ambiguous_header",
            details={"file": source, "header": list(names)},
        )
    raise ValidationFailed(
        f"The header of {source!r} matches neither kind: entities need "
        f"{', '.join(COLUMNS['entities'])} (missing {', '.join(missing['entities'])}); "
        f"interactions need {', '.join(COLUMNS['interactions'])} "
        f"(missing {', '.join(missing['interactions'])}).",
        code="unknown_header",
        details={"file": source, "header": list(names), "missing": missing},
    )


def _open_reader(path: Path, names: list[str], kind: Kind, block_size: int = BLOCK_SIZE
                 ) -> pv.CSVStreamingReader:
    unique = [n if n in COLUMNS[kind] and names.index(n) == i else f"_extra_{i}"
              for i, n in enumerate(names)]
    return pv.open_csv(
        path,
        read_options=pv.ReadOptions(
            column_names=unique, skip_rows=1, block_size=block_size, use_threads=True
        ),
        parse_options=pv.ParseOptions(newlines_in_values=True),
        convert_options=pv.ConvertOptions(
            column_types={c: pa.string() for c in COLUMNS[kind]},
            include_columns=list(COLUMNS[kind]),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def _structural_errors(path: Path, names: list[str], source: str, exc: Exception
                       ) -> list[dict[str, Any]]:
    found = scan(path, names).problems
    if not found:  # pyarrow saw something the exact pass did not: report pyarrow's words
        return [_error(source, None, None, f"the file cannot be read as CSV: {exc}")]
    return [_error(source, line, column, message) for line, column, message in found]


def _with_lines(path: Path, names: list[str], source: str, problems: list[Problem]
                ) -> list[dict[str, Any]]:
    lines = scan(path, names, want_rows={p.row for p in problems}).lines
    return [_error(source, lines.get(p.row), p.column, p.message) for p in problems]


class _Chunks:
    """Converts and writes chunks of rows in one background thread, in order.

    pyarrow releases the GIL while it parses, converts and encodes, so reading the next
    blocks of the CSV overlaps with converting and writing the previous ones.
    """

    def __init__(self, kind: Kind, out: Path) -> None:
        self.kind = kind
        self.writer = parquet_writer(out, kind)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")
        self.pending: list[Future[list[Problem]]] = []
        self.problems: list[Problem] = []

    def _convert(self, batches: list[pa.RecordBatch], offset: int) -> list[Problem]:
        table, found = convert(self.kind, pa.Table.from_batches(batches))
        if found:
            return [Problem(p.row + offset, p.column, p.message) for p in found]
        if not self.problems:
            self.writer.write_table(table)
        return []

    def submit(self, batches: list[pa.RecordBatch], offset: int) -> None:
        """Queue a chunk; waits while two are already queued, so memory stays bounded."""
        self.pending.append(self.pool.submit(self._convert, batches, offset))
        while len(self.pending) > 2 or (self.pending and self.pending[0].done()):
            self.problems.extend(self.pending.pop(0).result())

    def finish(self) -> list[Problem]:
        """Wait for every chunk; the problems found, first ones first."""
        for future in self.pending:
            self.problems.extend(future.result())
        self.pending = []
        return sorted(self.problems)[:MAX_PROBLEMS]

    def close(self) -> None:
        """Stop the thread and close the file."""
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)
        self.writer.close()


def _convert_file(path: Path, names: list[str], kind: Kind, out: Path, source: str,
                  settings: Settings, block_size: int) -> tuple[int, list[Problem]]:
    rows = 0
    chunk: list[pa.RecordBatch] = []
    chunk_rows = 0
    chunks = _Chunks(kind, out)
    try:
        try:
            for batch in _open_reader(path, names, kind, block_size):
                rows += batch.num_rows
                if rows > settings.max_file_rows:
                    raise PayloadTooLarge(
                        f"File {source!r} has more than {settings.max_file_rows} rows; "
                        "nothing was stored.",
                        code="too_many_rows",
                        details={"file": source, "max_file_rows": settings.max_file_rows},
                    )
                chunk.append(batch)
                chunk_rows += batch.num_rows
                if chunk_rows >= ROW_GROUP_ROWS:
                    chunks.submit(chunk, rows - chunk_rows)
                    chunk, chunk_rows = [], 0
                    if len(chunks.problems) >= MAX_PROBLEMS:
                        break
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" not in str(exc):
                raise
        if chunk:
            chunks.submit(chunk, rows - chunk_rows)
        return rows, chunks.finish()
    finally:
        chunks.close()


def prepare_csv(path: Path, source: str, out: Path, settings: Settings) -> Prepared | list[
        dict[str, Any]]:
    """Convert one uploaded CSV file to a temporary Parquet file, or return its row errors."""
    names = read_header(path, source)
    kind = detect_kind(names, source)
    try:
        try:
            rows, problems = _convert_file(path, names, kind, out, source, settings, BLOCK_SIZE)
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc):
                raise
            # A record larger than a block: read again with blocks large enough for any sane one.
            rows, problems = _convert_file(path, names, kind, out, source, settings,
                                           LARGE_BLOCK_SIZE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        return _structural_errors(path, names, source, exc)
    if problems:
        return _with_lines(path, names, source, problems)
    if rows == 0:
        return [_error(source, None, None, "the file has a header but no rows")]
    return Prepared(kind, out, rows, out.stat().st_size, source)


# -- JSON ------------------------------------------------------------------------------------
def _json_text(kind: Kind, column: str, value: Any) -> str | None:
    """A JSON item's field as the text a CSV cell would hold; None when the type is wrong."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if column == "metadata" and isinstance(value, dict):
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return None
    if column in ID_COLUMNS[kind] and isinstance(value, int):
        return str(value)
    if column == "timestamp" and isinstance(value, int | float):
        return repr(value) if isinstance(value, int) else f"{value:.6f}"
    return None


def _json_table(kind: Kind, items: list[Any]) -> tuple[pa.Table, list[dict[str, Any]]]:
    columns: dict[str, list[str]] = {c: [] for c in COLUMNS[kind]}
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):  # the body is already Python objects: one pass
        if not isinstance(item, dict):
            errors.append({"file": kind, "line": None, "index": index, "column": None,
                           "message": "each item is an object with the CSV columns as keys"})
            item = {}
        for column, cells in columns.items():
            text = _json_text(kind, column, item.get(column))
            if text is None:
                errors.append({"file": kind, "line": None, "index": index, "column": column,
                               "message": f"{column} has the wrong type"})
                text = ""
            cells.append(text)
    return pa.table({c: pa.array(v, pa.string()) for c, v in columns.items()}), errors


def prepare_json(
    body: Any, workdir: Path, settings: Settings
) -> tuple[list[Prepared], Any]:
    """Convert a JSON upload body to temporary Parquet files; returns them and the raw tags."""
    if not isinstance(body, Mapping):
        raise ValidationFailed(
            'The body is an object {"entities": [...], "interactions": [...], "tags": [...]}.',
            code="invalid_body",
        )
    unknown = sorted(set(body) - {"entities", "interactions", "tags"})
    if unknown:
        raise ValidationFailed(
            f"Unknown field(s) {', '.join(unknown)}; use entities, interactions and tags.",
            code="invalid_body",
            details={"fields": {name: ["Unknown field."] for name in unknown}},
        )
    prepared: list[Prepared] = []
    errors: list[dict[str, Any]] = []
    for kind in KINDS:
        items = body.get(kind)
        if items is None:
            continue
        if not isinstance(items, list):
            raise ValidationFailed(f"{kind} must be a list of objects.", code="invalid_body",
                                   details={"fields": {kind: ["Not a list."]}})
        if not items:
            continue
        if len(items) > settings.max_file_rows:
            raise PayloadTooLarge(
                f"{kind} has more than {settings.max_file_rows} items; nothing was stored.",
                code="too_many_rows", details={"max_file_rows": settings.max_file_rows},
            )
        text, type_errors = _json_table(kind, items)
        table, problems = convert(kind, text)
        found = type_errors + [
            {"file": kind, "line": None, "index": p.row, "column": p.column, "message": p.message}
            for p in problems
        ]
        if found:
            errors.extend(sorted(found, key=lambda e: e["index"]))
            continue
        out = workdir / f"{kind}.parquet"
        with parquet_writer(out, kind) as writer:
            writer.write_table(table)
        prepared.append(Prepared(kind, out, table.num_rows, out.stat().st_size, kind))
    if errors:
        raise row_errors(errors)
    if not prepared:
        raise ValidationFailed(
            "Nothing to store: give a non-empty entities or interactions list.",
            code="empty_upload",
        )
    return prepared, body.get("tags")


# -- storing ---------------------------------------------------------------------------------
def store(
    storage: Storage,
    r: redis.Redis,
    tenant: str,
    prepared: Sequence[Prepared],
    tags: tuple[str, ...],
    now: datetime,
) -> list[BatchMeta]:
    """Move the files into storage, then record them in one MULTI; undo everything on failure."""
    ids = new_batch_ids(len(prepared), now)
    metas = [
        BatchMeta(
            batch_id=batch_id,
            timestamp=iso_utc(now),
            tags=tags,
            kind=p.kind,
            entity_count=p.rows if p.kind == "entities" else 0,
            interaction_count=p.rows if p.kind == "interactions" else 0,
            bytes=p.bytes,
        )
        for batch_id, p in zip(ids, prepared, strict=True)
    ]
    placed: list[str] = []
    try:
        for meta, p in zip(metas, prepared, strict=True):
            storage.put_file(batch_path(tenant, meta.batch_id), p.path)
            placed.append(meta.batch_id)
        record_batches(r, tenant, metas)
    except BaseException:
        for batch_id in placed:
            try:
                storage.delete(batch_path(tenant, batch_id))
            except OSError:
                log.warning("could not remove %s after a failed upload", batch_id)
        raise
    return metas


def delete_files(storage: Storage, tenant: str, metas: Sequence[BatchMeta]) -> None:
    """Delete the stored files of forgotten batches (a missing file is not an error)."""
    for meta in metas:
        try:
            storage.delete(batch_path(tenant, meta.batch_id))
        except OSError:
            log.warning("could not delete the file of batch %s", meta.batch_id)
