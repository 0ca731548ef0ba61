"""Turning uploads into stored, registered batches: JSON bodies, and storing any upload.

CSV files are converted by :mod:`shared.ingest.csv_reader`; both forms end as
:class:`Prepared` temporary Parquet files written by :func:`parquet_writer`.

A request is stored whole or not at all (:func:`store`): every file is
converted into a temporary Parquet file first; only when all of them are good
are they moved into storage, and only when all files are in place is the
metadata recorded in one Redis ``MULTI``. Any failure removes what was written,
except when the ``MULTI``'s reply is lost (a timeout): Redis is then asked
whether it committed, and a committed upload keeps its files and succeeds.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from shared.config import Settings
from shared.data.batches import (
    KINDS,
    BatchMeta,
    Kind,
    batches_recorded,
    iso_utc,
    mark_pending,
    new_batch_ids,
    record_batches,
    stale_pending,
    unmark_pending,
)
from shared.errors import PayloadTooLarge, ServiceError, ValidationFailed
from shared.ingest.columns import COLUMNS, ID_COLUMNS, MAX_PROBLEMS, WRITE_SCHEMAS, convert
from shared.storage import Storage, batch_path

log = logging.getLogger(__name__)

PARQUET_COMPRESSION = "lz4"
#: Parquet options per kind: dictionaries only where values repeat a lot, statistics only
#: where readers filter (ids of entities for latest_entity, timestamps for the age cut).
PARQUET_OPTIONS: dict[Kind, dict[str, Any]] = {
    "entities": {"use_dictionary": ["type", "metadata"], "write_statistics": ["id"]},
    "interactions": {"use_dictionary": ["type", "metadata"], "write_statistics": ["timestamp"]},
}


def parquet_writer(path: Path, kind: Kind) -> pq.ParquetWriter:
    """A Parquet writer for a batch file of ``kind``, taking tables in ``WRITE_SCHEMAS[kind]``.

    The Arrow schema is not stored, so the dictionary columns read back as the plain
    strings of ``SCHEMAS[kind]``.
    """
    return pq.ParquetWriter(path, WRITE_SCHEMAS[kind], compression=PARQUET_COMPRESSION,
                            store_schema=False, **PARQUET_OPTIONS[kind])


@dataclass
class Prepared:
    """A converted, validated batch waiting in a temporary Parquet file."""

    kind: Kind
    path: Path
    rows: int
    bytes: int
    source: str


#: Seconds after which a file put in storage by an upload that never recorded it is removed.
STALE_PENDING_SECONDS = 3600
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


def error_item(source: str, line: int | None, column: str | None, message: str
               ) -> dict[str, Any]:
    """One entry of ``details.errors``."""
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
        table, problems = convert(kind, text, settings.max_id_length)
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
    settings: Settings | None = None,
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
    _sweep_stale(storage, r, tenant, now)
    mark_pending(r, tenant, ids, now.timestamp())
    placed: list[str] = []
    try:
        for meta, p in zip(metas, prepared, strict=True):
            storage.put_file(batch_path(tenant, meta.batch_id), p.path)
            placed.append(meta.batch_id)
    except BaseException:
        _undo(storage, r, tenant, placed, ids)
        raise
    try:
        record_batches(r, tenant, metas, settings)  # quotas checked in its transaction
    except BaseException:
        # The MULTI may have run with only its reply lost (a timeout): then the batches are
        # listed and their files must stay. Ask Redis; when it cannot say, keep the files:
        # an uncommitted upload keeps its pending marks, so the sweep removes them later.
        try:
            committed = batches_recorded(r, tenant, metas)
        except ServiceError:
            log.warning("upload of %s: Redis cannot say whether it was recorded; its files "
                        "stay until the sweep decides", ", ".join(ids))
            raise
        if committed:
            log.warning("upload of %s was recorded although Redis did not answer in time",
                        ", ".join(ids))
            return metas
        _undo(storage, r, tenant, placed, ids)
        raise
    return metas


def _undo(storage: Storage, r: redis.Redis, tenant: str, placed: Sequence[str],
          ids: Sequence[str]) -> None:
    """Remove the files of an upload that was not recorded, and its pending marks."""
    _remove_files(storage, tenant, placed)
    with contextlib.suppress(ServiceError):  # Redis down too: the sweep clears it later
        unmark_pending(r, tenant, ids)


def _remove_files(storage: Storage, tenant: str, batch_ids: Sequence[str]) -> None:
    for batch_id in batch_ids:
        try:
            storage.delete(batch_path(tenant, batch_id))
        except OSError:
            log.warning("could not remove the file of unrecorded batch %s", batch_id)


def _sweep_stale(storage: Storage, r: redis.Redis, tenant: str, now: datetime) -> None:
    """Remove files a crashed upload put in storage but never recorded (invisible anyway)."""
    stale = stale_pending(r, tenant, now.timestamp() - STALE_PENDING_SECONDS)
    if stale:
        log.warning("removing %d file(s) of uploads that died before recording them", len(stale))
        _remove_files(storage, tenant, stale)
        unmark_pending(r, tenant, stale)


def delete_files(storage: Storage, tenant: str, metas: Sequence[BatchMeta]) -> None:
    """Delete the stored files of forgotten batches (a missing file is not an error)."""
    for meta in metas:
        try:
            storage.delete(batch_path(tenant, meta.batch_id))
        except OSError:
            log.warning("could not delete the file of batch %s", meta.batch_id)
