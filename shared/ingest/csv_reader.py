"""CSV files to validated Parquet batches: header and kind, pyarrow's reader, exact errors.

A file is read in up to three ways, each slower and plainer than the one before;
the next is only tried when the one before asks for it (:func:`finish`):

0. :data:`PIECES`: the rows are cut at line ends into pieces of a few MiB
   (:mod:`shared.ingest.segments`); a pool of threads parses each piece with
   pyarrow and converts it (:mod:`shared.ingest.columns`), while this thread writes the
   converted pieces, in order, as Parquet row groups. The reader does what it
   can while it parses: ``type`` and ``metadata`` come out as dictionaries and,
   when the first rows show ISO-8601 timestamps (with or without an offset), it
   parses the timestamps too. A cut inside a quoted value, or any cell or row
   pyarrow refuses, sends the file to the next way.
1. :data:`STREAM`: pyarrow's streaming reader over the whole file, one block
   after another, timestamps as text (mixed forms are accepted), converted by a
   second thread: exactly what the file says, or its first problems.
2. :data:`STREAM_LARGE`: the same with blocks of :data:`LARGE_BLOCK_SIZE`, for a
   record larger than a block.

The header row and the kind it names are read first (:mod:`shared.ingest.csv_header`).
Memory stays bounded by the piece, block and row-group sizes, not the file size.
:func:`convert_stream` reads from any binary stream, so a file is converted
while it is still arriving (:mod:`shared.ingest.pipe`); later ways read its copy on
disk. Only when a file fails does :mod:`shared.ingest.line_errors` read it again, from
disk, to find exact lines.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pv

from shared.config import Settings
from shared.data.batches import Kind
from shared.errors import PayloadTooLarge
from shared.ingest.columns import (
    COLUMNS,
    DICTIONARY_COLUMNS,
    DICTIONARY_TYPE,
    MAX_PROBLEMS,
    Problem,
    convert,
)
from shared.ingest.csv_header import detect_kind, guess_timestamps, read_header
from shared.ingest.line_errors import scan
from shared.ingest.segments import NoLineEnd, ends_inside_value, map_segments
from shared.ingest.store import Prepared, error_item, parquet_writer

#: Bytes pyarrow's streaming reader parses per block; a record must fit in one.
BLOCK_SIZE = 1 << 20
#: Block size of the last way, for a record larger than :data:`BLOCK_SIZE`.
LARGE_BLOCK_SIZE = 64 << 20
#: Rows the streaming ways convert and write together (one Parquet row group).
ROW_GROUP_ROWS = 128_000
#: The ways a file is read, in the order they are tried (see the module's docstring).
PIECES, STREAM, STREAM_LARGE = 0, 1, 2


@dataclass
class Failed:
    """A file that did not convert; :func:`explain` turns it into line-exact errors."""

    names: list[str]
    problems: list[Problem] = field(default_factory=list)
    error: Exception | None = None
    #: The way to read the file next, from its copy on disk (None: this is the answer).
    retry: int | None = None
    #: The file has a header and nothing else.
    no_rows: bool = False


def _options(names: list[str], kind: Kind, timestamps: pa.DataType | None, block_size: int,
             threads: bool, keep: tuple[int, ...] = ()) -> dict[str, Any]:
    """pyarrow's CSV options for the rows after the header (``keep``: other columns to read).

    Columns are named as in the header, except duplicates and columns of no use, which
    are named ``_extra_<position>``.
    """
    unique = [n if n in COLUMNS[kind] and names.index(n) == i else f"_extra_{i}"
              for i, n in enumerate(names)]
    types: dict[str, pa.DataType] = {
        c: DICTIONARY_TYPE if c in DICTIONARY_COLUMNS else pa.string() for c in COLUMNS[kind]
    }
    if timestamps is not None:
        types["timestamp"] = timestamps
    include = list(COLUMNS[kind]) + [unique[i] for i in keep if unique[i] not in COLUMNS[kind]]
    return {
        "read_options": pv.ReadOptions(column_names=unique, block_size=block_size,
                                       use_threads=threads),
        "parse_options": pv.ParseOptions(newlines_in_values=True),
        "convert_options": pv.ConvertOptions(
            column_types=types,
            include_columns=include,
            # only a parsed timestamp may be null (an empty cell); text stays text
            null_values=[""],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    }


class _Chunks:
    """Converts and writes chunks of rows in one background thread, in order.

    pyarrow releases the GIL while it parses, converts and encodes, so reading the next
    blocks of the CSV overlaps with converting and writing the previous ones.
    """

    def __init__(self, kind: Kind, out: Path, max_id_length: int) -> None:
        self.kind = kind
        self.max_id_length = max_id_length
        self.writer = parquet_writer(out, kind)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")
        self.pending: list[Future[list[Problem]]] = []
        self.problems: list[Problem] = []

    def _convert(self, batches: list[pa.RecordBatch], offset: int) -> list[Problem]:
        table, found = convert(self.kind, pa.Table.from_batches(batches), self.max_id_length)
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


@dataclass
class _Piece:
    """A piece of a file, parsed and converted by :func:`_convert_piece`."""

    rows: int
    table: pa.Table | None = None
    problems: list[Problem] = field(default_factory=list)
    #: The piece may end inside a quoted value: read the file another way.
    cut_inside: bool = False


def _last_text(table: pa.Table, position: int) -> str | None:
    """The text in the last row of column ``position`` (None if the column is not text)."""
    col = table.column(position)
    if not (pa.types.is_string(col.type) or pa.types.is_dictionary(col.type)):
        return None
    value = col[len(col) - 1].as_py()
    return value if isinstance(value, str) else None


def _convert_piece(piece: memoryview, kind: Kind, options: dict[str, Any], last: str,
                   max_id_length: int) -> _Piece:
    """Parse and convert one piece of a file (in a pool thread)."""
    try:
        table = pv.read_csv(pa.BufferReader(pa.py_buffer(piece)), **options)
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return _Piece(0)
        raise
    rows = table.num_rows
    if rows and ends_inside_value(_last_text(table, table.schema.get_field_index(last))):
        return _Piece(rows, cut_inside=True)
    converted, problems = convert(kind, table.select(list(COLUMNS[kind])), max_id_length)
    return _Piece(rows, None if problems else converted, problems)


def _convert_pieces(stream: IO[bytes], names: list[str], kind: Kind, out: Path,
                    source: str, settings: Settings) -> Prepared | Failed:
    """:data:`PIECES`: parsed and converted in a pool of threads, written here in order."""
    timestamps = guess_timestamps(stream, names) if kind == "interactions" else None
    # one block per piece (pieces are small), so a record never straddles blocks
    options = _options(names, kind, timestamps, LARGE_BLOCK_SIZE, threads=False,
                       keep=(len(names) - 1,))
    # the header's last column, read to check that a piece does not end inside a value
    last = options["read_options"].column_names[-1]
    rows = 0
    problems: list[Problem] = []
    with parquet_writer(out, kind) as writer:
        pieces = map_segments(stream, lambda p: _convert_piece(p, kind, options, last,
                                                               settings.max_id_length))
        try:
            for piece in pieces:
                if piece.cut_inside:
                    return Failed(names, retry=STREAM)
                problems.extend(Problem(p.row + rows, p.column, p.message)
                                for p in piece.problems)
                rows += piece.rows
                if rows > settings.max_file_rows:
                    raise _too_many_rows(source, settings)
                if len(problems) >= MAX_PROBLEMS:
                    break
                if piece.table is not None and not problems:
                    writer.write_table(piece.table)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, NoLineEnd) as exc:
            return Failed(names, error=exc, retry=STREAM)
        finally:
            pieces.close()
    return _outcome(names, kind, out, rows, source, problems)


def _convert_blocks(stream: IO[bytes], names: list[str], kind: Kind, out: Path, source: str,
                    settings: Settings, way: int) -> Prepared | Failed:
    """:data:`STREAM` and :data:`STREAM_LARGE`: pyarrow's streaming reader, timestamps as text."""
    block_size = LARGE_BLOCK_SIZE if way == STREAM_LARGE else BLOCK_SIZE
    rows = 0
    chunk: list[pa.RecordBatch] = []
    chunk_rows = 0
    chunks = _Chunks(kind, out, settings.max_id_length)
    try:
        try:
            for batch in pv.open_csv(stream, **_options(names, kind, None, block_size, True)):
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
            elif "straddl" in str(exc) and way < STREAM_LARGE:
                return Failed(names, error=exc, retry=STREAM_LARGE)
            else:
                return Failed(names, error=exc)
    finally:
        chunks.close()
    return _outcome(names, kind, out, rows, source, problems)


def _outcome(names: list[str], kind: Kind, out: Path, rows: int, source: str,
             problems: list[Problem]) -> Prepared | Failed:
    if problems:
        return Failed(names, problems=sorted(problems)[:MAX_PROBLEMS])
    if rows == 0:
        return Failed(names, no_rows=True)
    return Prepared(kind, out, rows, out.stat().st_size, source)


def convert_stream(stream: IO[bytes], source: str, out: Path, settings: Settings,
                   way: int = PIECES) -> Prepared | Failed:
    """Convert a CSV byte stream into the Parquet file ``out``; 413/422 for bad headers, limits.

    ``way`` says how to read it (see the module's docstring); a :class:`Failed` result may
    ask for another way in its ``retry``.
    """
    names, stream = read_header(stream, source)
    kind = detect_kind(names, source)
    if way == PIECES:
        return _convert_pieces(stream, names, kind, out, source, settings)
    return _convert_blocks(stream, names, kind, out, source, settings, way)


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
    """The outcome of a conversion: the batch, or its errors (trying the ways asked for)."""
    while isinstance(result, Failed) and result.retry is not None:
        with open(path, "rb") as fh:
            result = convert_stream(fh, source, out, settings, result.retry)
    if isinstance(result, Prepared):
        return result
    return explain(path, source, result)


def prepare_csv(path: Path, source: str, out: Path, settings: Settings
                ) -> Prepared | list[dict[str, Any]]:
    """Convert one CSV file on disk to a temporary Parquet file, or return its row errors."""
    with open(path, "rb") as fh:
        result = convert_stream(fh, source, out, settings)
    return finish(path, source, out, settings, result)
