"""The slow, exact pass over a CSV file that failed: physical line numbers for its problems.

pyarrow's CSV reader is fast but reports no line numbers (DESIGN.md, known
pitfalls), so the good case never comes here. When a file fails, this pass
reads it again with the standard library's :mod:`csv` module, one record at a
time, and answers two questions: which rows are structurally broken (wrong
column count, bytes that are not UTF-8, a cell past the size limit) and on
which 1-based physical line each data row starts (the header is line 1; a
quoted multi-line record reports the line it starts on). Lines end at ``\\n``,
``\\r\\n`` or a lone ``\\r``, as for pyarrow; blank lines are skipped, as pyarrow
skips them, so row ordinals agree between the two readers.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from shared.ingest.columns import MAX_FIELD_BYTES, MAX_PROBLEMS

BOM = b"\xef\xbb\xbf"
#: Largest cell this pass reads: above the largest record pyarrow's last way parses (64 MiB),
#: so a row pyarrow parsed (a cell past MAX_FIELD_BYTES, say) always gets its line.
MAX_CELL_CHARS = 128 << 20
#: Bytes that are not UTF-8 come back from ``errors="surrogateescape"`` as these code points.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


@dataclass
class ScanResult:
    """What the slow pass found."""

    #: 0-based data row -> 1-based physical line where the record starts (only rows asked for).
    lines: dict[int, int] = field(default_factory=dict)
    #: Structural problems as (line, column name or None, message), in file order.
    problems: list[tuple[int, str | None, str]] = field(default_factory=list)


def _check(record: list[str], header: list[str], start: int, result: ScanResult) -> None:
    if any(_UNDECODABLE.search(cell) for cell in record):
        result.problems.append((start, None, "the record is not valid UTF-8 text"))
    elif len(record) != len(header):
        result.problems.append((
            start, None, f"expected {len(header)} columns as in the header, found {len(record)}"
        ))
    else:
        for name, cell in zip(header, record, strict=True):
            if len(cell) > MAX_FIELD_BYTES:
                result.problems.append(
                    (start, name, f"the cell is larger than {MAX_FIELD_BYTES} bytes"))
                break


def scan(
    path: Path,
    header: list[str],
    want_rows: set[int] | None = None,
    limit: int = MAX_PROBLEMS,
) -> ScanResult:
    """Find structural problems (when ``want_rows`` is None) or the start lines of ``want_rows``."""
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CELL_CHARS))
    result = ScanResult()
    wanted = set(want_rows or ())
    last_wanted = max(wanted) if wanted else -1
    row = -1
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh, strict=False)
        while True:
            start = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                if want_rows is None:
                    result.problems.append((start, None, f"the record cannot be read: {exc}"))
                elif row + 1 in wanted:  # the record that failed is the next row
                    result.lines[row + 1] = start
                break
            if start == 1 or not record:
                continue  # the header; a blank line (pyarrow skips those too)
            row += 1
            if want_rows is not None:
                if row in wanted:
                    result.lines[row] = start
                if row >= last_wanted:
                    break
                continue
            _check(record, header, start, result)
            if len(result.problems) >= limit:
                break
    return result
