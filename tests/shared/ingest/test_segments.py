"""Converting CSV files in pieces: cuts at line ends, and the ways a file falls back to."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from shared.config import Settings
from shared.ingest import csv_reader as csv_ingest
from shared.ingest import segments as csv_segments
from shared.ingest.buffers import BufferPool
from shared.ingest.csv_reader import PIECES, STREAM, prepare_csv
from shared.ingest.segments import NoLineEnd, segments
from shared.ingest.store import Prepared

HEADER = "source_id,target_id,timestamp,type,metadata\n"


def _pieces(data: bytes, size: int, max_size: int = 1 << 20) -> list[bytes]:
    return [bytes(piece) for _, piece in
            segments(io.BytesIO(data), BufferPool(size, keep=0), max_size)]


def test_pieces_end_at_line_ends_and_add_up_to_the_stream() -> None:
    data = b"".join(b"row %d,%s\n" % (i, b"x" * (i % 7)) for i in range(200)) + b"last"
    pieces = _pieces(data, 64)
    assert b"".join(pieces) == data
    assert len(pieces) > 10
    assert all(p.endswith(b"\n") for p in pieces[:-1]) and pieces[-1].endswith(b"last")


def test_a_line_longer_than_a_piece_grows_the_piece() -> None:
    data = b"a\n" + b"y" * 300 + b"\nb\n"
    assert b"".join(_pieces(data, 16)) == data
    assert any(len(p) > 300 for p in _pieces(data, 16))
    with pytest.raises(NoLineEnd):
        _pieces(b"z" * 1000, 16, max_size=128)


@pytest.fixture
def ways(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The ways each conversion read its file, with pieces of 40 bytes."""
    seen: list[int] = []
    real = csv_ingest.convert_stream

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(args[4] if len(args) > 4 else kwargs.get("way", PIECES))
        return real(*args, **kwargs)

    monkeypatch.setattr(csv_ingest, "convert_stream", spy)
    monkeypatch.setattr(csv_segments, "SEGMENT_BYTES", 40)
    yield seen


def _convert(tmp_path: Path, text: str) -> list[dict[str, Any]]:
    src = tmp_path / "in.csv"
    src.write_text(text)
    result = prepare_csv(src, "in.csv", tmp_path / "out.parquet", Settings(data_dir=tmp_path))
    assert isinstance(result, Prepared), result
    rows: list[dict[str, Any]] = pq.read_table(result.path).to_pylist()
    return rows


def test_plain_rows_are_read_in_pieces(tmp_path: Path, ways: list[int]) -> None:
    rows = "".join(f"u{i},item{i},2024-01-02T03:04:0{i % 10}Z,,\n" for i in range(30))
    stored = _convert(tmp_path, HEADER + rows)
    assert ways == [PIECES]
    assert [r["source_id"] for r in stored] == [f"u{i}" for i in range(30)]
    assert stored[3]["timestamp"] == datetime(2024, 1, 2, 3, 4, 3, tzinfo=UTC)


@pytest.mark.parametrize("last", [True, False])
def test_a_cut_inside_a_quoted_value_is_caught(tmp_path: Path, ways: list[int],
                                               last: bool) -> None:
    # a value spanning many lines: some piece is cut inside it
    value = "\n".join(f"line {i}" for i in range(20))
    if last:  # in a column of no use, read only to check the cut
        text = (f'id,name,metadata,type,media_url,notes\ne0,a,,,,\ne1,,,,,"{value}"\n'
                "e2,b,,,,\n")
    else:
        text = f'id,name,metadata,type,media_url\ne0,a,,,\ne1,"{value}",,,\ne2,b,,,\n'
    stored = _convert(tmp_path, text)
    assert ways == [PIECES, STREAM]
    assert [r["id"] for r in stored] == ["e0", "e1", "e2"]
    assert stored[1]["name"] == (None if last else value)


def test_timestamps_in_another_form_than_the_first_rows_are_read_again(
    tmp_path: Path, ways: list[int]
) -> None:
    rows = [f"u{i},i,2024-01-02T00:00:00Z,,\n" for i in range(20)] + ["u,i,1700000000,,\n"]
    stored = _convert(tmp_path, HEADER + "".join(rows))
    assert ways == [PIECES, STREAM]
    assert stored[-1]["timestamp"] == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_naive_timestamps_are_parsed_by_the_reader_as_utc(tmp_path: Path,
                                                           ways: list[int]) -> None:
    stored = _convert(tmp_path, HEADER + "u,i,2024-05-06 07:08:09,,\n")
    assert ways == [PIECES]
    assert stored[0]["timestamp"] == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_problems_in_later_pieces_count_rows_from_the_start(tmp_path: Path,
                                                            ways: list[int]) -> None:
    rows = [f"u{i},i{i},,,\n" for i in range(40)]
    rows[33] = ",i33,,,\n"
    src = tmp_path / "in.csv"
    src.write_text(HEADER + "".join(rows))
    errors = prepare_csv(src, "in.csv", tmp_path / "out.parquet", Settings(data_dir=tmp_path))
    assert isinstance(errors, list)
    assert [(e["line"], e["column"]) for e in errors] == [(35, "source_id")]
