"""The head of a CSV file: its header row, the kind of batch it names, the form of its timestamps.

:func:`read_header` reads only the header's line and hands back a stream of the rows
after it, so :mod:`shared.ingest.csv_reader` can read those in any of its ways;
:func:`guess_timestamps` looks at the first rows that stream has already buffered.
"""

from __future__ import annotations

import csv
import io
from typing import IO

import pyarrow as pa

from shared.data.batches import KINDS, Kind
from shared.errors import ValidationFailed
from shared.ingest.columns import COLUMNS, TIMESTAMP_TYPE, is_numeric_text, is_offset_text
from shared.ingest.line_errors import BOM
from shared.ingest.store import error_item

#: Longest header line read, in bytes.
MAX_HEADER_BYTES = 64 * 1024
#: Rows looked at to guess the form of the timestamps.
SAMPLE_ROWS = 20
#: Buffer of the rows' stream when bytes past the header were read with it (as large as
#: one block of pyarrow's streaming reader, :data:`shared.ingest.csv_reader.BLOCK_SIZE`).
ROWS_BUFFER_SIZE = 1 << 20


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
    rows = io.BufferedReader(_Prefixed(rest, stream), buffer_size=ROWS_BUFFER_SIZE)
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


def guess_timestamps(stream: IO[bytes], names: list[str]) -> pa.DataType | None:
    """The type pyarrow should parse timestamps as, from the first rows already buffered.

    ``timestamp[us, UTC]`` when they carry offsets, naive ``timestamp[us]`` when they do
    not (read as UTC later), None (read as text) for Unix seconds, mixed forms, or when
    unsure. Only a guess: a later cell in another form makes pyarrow refuse the piece.
    """
    peek = getattr(stream, "peek", None)
    if "timestamp" not in names or peek is None:
        return None
    head = peek(MAX_HEADER_BYTES)[:MAX_HEADER_BYTES]
    try:
        lines = head[: head.rfind(b"\n") + 1].decode("utf-8").splitlines()[:SAMPLE_ROWS]
        rows = list(csv.reader(lines))
    except (UnicodeDecodeError, csv.Error):
        return None
    at = names.index("timestamp")
    cells = [row[at] for row in rows if len(row) == len(names) and row[at]]
    if not cells or any(is_numeric_text(c) for c in cells):
        return None
    offsets = {is_offset_text(c) for c in cells}
    if len(offsets) > 1:
        return None
    return TIMESTAMP_TYPE if offsets.pop() else pa.timestamp("us")
