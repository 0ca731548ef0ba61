"""The slow, exact pass over a CSV file that failed: physical line numbers for its problems.

pyarrow's CSV reader is fast but reports no line numbers (DESIGN.md, known
pitfalls), so the good case never comes here. When a file fails, this pass
reads it again with the standard library's :mod:`csv` module, one record at a
time, and answers two questions: which rows are structurally broken (wrong
column count, bytes that are not UTF-8, a cell past the size limit) and on
which 1-based physical line each data row starts (the header is line 1; a
quoted multi-line record reports the line it starts on). Blank lines are
skipped, as pyarrow skips them, so row ordinals agree between the two readers.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.columns import MAX_FIELD_BYTES, MAX_PROBLEMS

BOM = b"\xef\xbb\xbf"


@dataclass
class ScanResult:
    """What the slow pass found."""

    #: 0-based data row -> 1-based physical line where the record starts (only rows asked for).
    lines: dict[int, int] = field(default_factory=dict)
    #: Structural problems as (line, column name or None, message), in file order.
    problems: list[tuple[int, str | None, str]] = field(default_factory=list)


def _decoded_lines(path: Path, result: ScanResult, limit: int) -> Iterator[str]:
    """Each physical line as text; a line that is not UTF-8 is recorded and replaced."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if len(result.problems) < limit:
                    result.problems.append(
                        (number, None, f"the line is not valid UTF-8 text (byte {exc.start + 1})")
                    )
                yield raw.decode("utf-8", errors="replace")


def scan(
    path: Path,
    header: list[str],
    want_rows: set[int] | None = None,
    limit: int = MAX_PROBLEMS,
) -> ScanResult:
    """Find structural problems (when ``want_rows`` is None) or the start lines of ``want_rows``."""
    csv.field_size_limit(max(csv.field_size_limit(), 4 * MAX_FIELD_BYTES))
    result = ScanResult()
    wanted = set(want_rows or ())
    last_wanted = max(wanted) if wanted else -1
    lines = _decoded_lines(path, result, limit)
    reader = csv.reader(lines, strict=False)
    row = -1
    start = 1
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if want_rows is None and len(result.problems) < limit:
                result.problems.append((start, None, f"the record cannot be read as CSV: {exc}"))
            break
        if start == 1:
            continue  # the header
        if not record:
            continue  # a blank line, skipped by pyarrow too
        row += 1
        if row in wanted:
            result.lines[row] = start
            if row >= last_wanted and want_rows is not None:
                break
        if want_rows is None:
            if len(record) != len(header):
                result.problems.append((
                    start, None,
                    f"expected {len(header)} columns as in the header, found {len(record)}",
                ))
            else:
                for name, cell in zip(header, record, strict=True):
                    if len(cell) > MAX_FIELD_BYTES:
                        result.problems.append(
                            (start, name, f"the cell is larger than {MAX_FIELD_BYTES} bytes")
                        )
                        break
            if len(result.problems) >= limit:
                break
    result.problems.sort(key=lambda p: p[0])
    return result
