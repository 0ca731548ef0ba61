"""CSV files to validated Parquet batches: header and kind, pyarrow's reader, exact errors.

The good case reads a file once with pyarrow's multi-threaded streaming CSV
reader while a second thread converts and validates chunks of rows with
whole-column operations (:mod:`shared.columns`) and writes them as Parquet row
groups, so memory stays bounded by the block and row-group sizes, not the file
size. :func:`convert_stream` reads from any binary stream, so a file can be
converted while it is still arriving (:mod:`shared.csv_pipe`). Only when a file
fails does :mod:`shared.csv_errors` read it again, from disk, to find exact lines.
"""

from __future__ import annotations

import csv
import io
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pv

from shared.batches import KINDS, Kind
from shared.columns import COLUMNS, MAX_PROBLEMS, Problem, convert
from shared.config import Settings
from shared.csv_errors import BOM, scan
from shared.errors import PayloadTooLarge, ValidationFailed
from shared.ingest import Prepared, error_item, parquet_writer

#: Bytes pyarrow parses per block (small blocks parallelise best); a record must fit in one.
BLOCK_SIZE = 1 << 20
#: Block size of the second attempt when a record is larger than :data:`BLOCK_SIZE`.
LARGE_BLOCK_SIZE = 64 << 20
#: Rows converted and written together (one Parquet row group).
ROW_GROUP_ROWS = 128_000
#: Longest header line read, in bytes.
MAX_HEADER_BYTES = 64 * 1024


@dataclass
class Failed:
    """A file that did not convert; :func:`explain` turns it into line-exact errors."""

    names: list[str]
    problems: list[Problem] = field(default_factory=list)
    error: Exception | None = None
    #: A record was larger than a block: read again from disk with larger blocks.
    retry: bool = False
    #: The file has a header and nothing else.
    no_rows: bool = False


class _Prefixed(io.RawIOBase):
    """``prefix`` followed by the rest of ``stream``: gives back bytes read past the header."""

    def __init__(self, prefix: bytes, stream: IO[bytes]) -> None:
        super().__init__()
        self._prefix = memoryview(prefix)
        self._stream = stream

    def readable(self) -> bool:
        """Readable like a file."""
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        """The prefix first, then the stream."""
        if len(self._prefix):
            n = min(len(target), len(self._prefix))
            target[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._stream.read(len(target))
        target[: len(data)] = data
        return len(data)


def read_header(stream: IO[bytes], source: str) -> tuple[list[str], IO[bytes]]:
    """The header's names (BOM stripped, trimmed, lower-cased) and a stream of the rows after it.

    The header ends at the first ``\n``, ``\r\n`` or lone ``\r``; bytes read past it are
    handed back in the returned stream (pyarrow skips the empty line they start with).
    """
    first = stream.readline(MAX_HEADER_BYTES)
    if first.startswith(BOM):
        first = first[len(BOM):]
    ends = [i for i in (first.find(b"\r"), first.find(b"\n")) if i >= 0]
    cut = min(ends) if ends else len(first)
    line, rest = first[:cut], first[cut:]
    if not line.strip():
        empty = not first.strip() and not stream.read(1)
        raise ValidationFailed(
            f"File {source!r} is empty; a CSV file starts with a header row." if empty else
            f"The first line of {source!r} is blank; a CSV file starts with a header row.",
            code="empty_file" if empty else "missing_header",
            details={"errors": [error_item(source, 1, None, "the file is empty" if empty
                                           else "the first line is not a header")]},
        )
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationFailed(
            f"File {source!r} is not UTF-8 text.",
            code="invalid_rows",
            details={"errors": [error_item(source, 1, None,
                                           "the header is not valid UTF-8 text")]},
        ) from exc
    names = next(csv.reader([text]), [])
    if not rest.strip(b"\r\n"):  # the usual case: only the header's line end was read
        return [n.strip().lower() for n in names], stream
    rows = io.BufferedReader(_Prefixed(rest, stream), buffer_size=BLOCK_SIZE)
    return [n.strip().lower() for n in names], rows


def detect_kind(names: list[str], source: str) -> Kind:
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


def _open_reader(stream: IO[bytes], names: list[str], kind: Kind, block_size: int
                 ) -> pv.CSVStreamingReader:
    """pyarrow's reader over the rows after the header (already consumed from ``stream``)."""
    unique = [n if n in COLUMNS[kind] and names.index(n) == i else f"_extra_{i}"
              for i, n in enumerate(names)]
    return pv.open_csv(
        stream,
        read_options=pv.ReadOptions(column_names=unique, block_size=block_size,
                                    use_threads=True),
        parse_options=pv.ParseOptions(newlines_in_values=True),
        convert_options=pv.ConvertOptions(
            column_types={c: pa.string() for c in COLUMNS[kind]},
            include_columns=list(COLUMNS[kind]),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


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
        """Queue a chunk; waits while one is already queued, so memory stays bounded."""
        self.pending.append(self.pool.submit(self._convert, batches, offset))
        while len(self.pending) > 1 or (self.pending and self.pending[0].done()):
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


def _too_many_rows(source: str, settings: Settings) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"File {source!r} has more than {settings.max_file_rows} rows; nothing was stored.",
        code="too_many_rows",
        details={"file": source, "max_file_rows": settings.max_file_rows},
    )


def convert_stream(
    stream: IO[bytes], source: str, out: Path, settings: Settings, block_size: int = BLOCK_SIZE
) -> Prepared | Failed:
    """Convert a CSV byte stream into the Parquet file ``out``; 413/422 for bad headers, limits."""
    names, stream = read_header(stream, source)
    kind = detect_kind(names, source)
    rows = 0
    chunk: list[pa.RecordBatch] = []
    chunk_rows = 0
    chunks = _Chunks(kind, out)
    try:
        try:
            for batch in _open_reader(stream, names, kind, block_size):
                rows += batch.num_rows
                if rows > settings.max_file_rows:
                    raise _too_many_rows(source, settings)
                chunk.append(batch)
                chunk_rows += batch.num_rows
                if chunk_rows >= ROW_GROUP_ROWS:
                    chunks.submit(chunk, rows - chunk_rows)
                    chunk, chunk_rows = [], 0
                    if len(chunks.problems) >= MAX_PROBLEMS:
                        break
            if chunk:
                chunks.submit(chunk, rows - chunk_rows)
            problems = chunks.finish()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            if "Empty CSV file" in str(exc):
                problems = []
            else:
                return Failed(names, error=exc, retry="straddl" in str(exc))
    finally:
        chunks.close()
    if problems:
        return Failed(names, problems=problems)
    if rows == 0:
        return Failed(names, no_rows=True)
    return Prepared(kind, out, rows, out.stat().st_size, source)


def explain(path: Path, source: str, failed: Failed) -> list[dict[str, Any]]:
    """Line-exact errors of a failed file, read again from its complete copy on disk."""
    if failed.problems:
        lines = scan(path, failed.names, want_rows={p.row for p in failed.problems}).lines
        return [error_item(source, lines.get(p.row), p.column, p.message)
                for p in failed.problems]
    if failed.no_rows:
        return [error_item(source, None, None, "the file has a header but no rows")]
    found = scan(path, failed.names).problems
    if not found:  # pyarrow saw something the exact pass did not: report pyarrow's words
        return [error_item(source, None, None, f"the file cannot be read as CSV: {failed.error}")]
    return [error_item(source, line, column, message) for line, column, message in found]


def finish(path: Path, source: str, out: Path, settings: Settings, result: Prepared | Failed
           ) -> Prepared | list[dict[str, Any]]:
    """The outcome of a conversion: the batch, or its errors (retrying huge records once)."""
    if isinstance(result, Failed) and result.retry:
        # A record larger than a block: read again with blocks large enough for any sane one.
        with open(path, "rb") as fh:
            result = convert_stream(fh, source, out, settings, LARGE_BLOCK_SIZE)
    if isinstance(result, Prepared):
        return result
    return explain(path, source, result)


def prepare_csv(path: Path, source: str, out: Path, settings: Settings
                ) -> Prepared | list[dict[str, Any]]:
    """Convert one CSV file on disk to a temporary Parquet file, or return its row errors."""
    with open(path, "rb") as fh:
        result = convert_stream(fh, source, out, settings)
    return finish(path, source, out, settings, result)
