"""Column conversion: the timestamp forms accepted, and bad cells found in big columns."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from shared.ingest.columns import convert, parse_timestamps


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2024-01-02T03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),  # no offset: UTC
    ("2024-01-02 05:04:05+02:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("2024-01-02", datetime(2024, 1, 2, tzinfo=UTC)),
    ("2024-01-02T03:04:05.123456789Z", datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
    ("1500-06-01T00:00:00Z", datetime(1500, 6, 1, tzinfo=UTC)),
    ("1700000000", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
    ("1700000000.25", datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC)),
    ("1.7e9", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
    (" 2024-01-02 ", datetime(2024, 1, 2, tzinfo=UTC)),
    ("", None),
])
def test_accepted_forms(text: str, expected: datetime | None) -> None:
    # alone, and mixed with other forms in one column
    for column in ([text], [text, "1", "2024-01-01T00:00:00+01:00", "2024-01-01"]):
        values, problems = parse_timestamps(pa.array(column, pa.string()))
        assert problems == []
        assert values[0].as_py() == expected


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "1700000000000", "nan", "inf",
                                  "2024-01-02T25:00:00Z", "12/31/2024"])
def test_refused_forms(text: str) -> None:
    _, problems = parse_timestamps(pa.array(["2024-01-01", text, "5"], pa.string()))
    assert [(p.row, p.column) for p in problems] == [(1, "timestamp")]


def test_bad_cells_are_found_among_many() -> None:
    cells = ["2024-01-01T00:00:00Z"] * 200_000
    cells[123_456] = "1700000000000"
    cells[199_999] = "soon"
    n = len(cells)
    text = pa.table({"type": [""] * n, "source_id": ["u"] * n, "target_id": ["i"] * n,
                     "timestamp": cells, "metadata": [""] * n})
    table, problems = convert("interactions", text)
    assert [p.row for p in problems] == [123_456, 199_999]
    cells[123_456] = cells[199_999] = "1700000000"
    table, problems = convert("interactions", text.set_column(
        3, "timestamp", pa.array(cells, pa.string())))
    assert problems == [] and table.num_rows == n
    assert table.column("type")[0].as_py() == "default"
    assert table.column("metadata")[0].as_py() == "{}"
