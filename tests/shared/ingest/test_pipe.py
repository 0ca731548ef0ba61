"""The in-memory pipe that lets pyarrow read a CSV file while it is still arriving."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shared.config import Settings
from shared.errors import ValidationFailed
from shared.ingest.csv_reader import Failed
from shared.ingest.pipe import ChunkPipe, StreamingConversion
from shared.ingest.store import Prepared


def test_pipe_delivers_every_byte_in_order_with_backpressure() -> None:
    pipe = ChunkPipe(max_chunks=2)
    chunks = [bytes([n % 251]) * (n * 97 % 5000 + 1) for n in range(200)]
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(io.BufferedReader(pipe, 4096).read()))
    reader.start()
    for chunk in chunks:
        pipe.feed(chunk)
    pipe.end()
    reader.join(timeout=10)
    assert got == [b"".join(chunks)]


def test_abort_unblocks_the_reader_and_feed_never_blocks_after_it_is_gone() -> None:
    pipe = ChunkPipe(max_chunks=1)
    reader = threading.Thread(target=lambda: io.BufferedReader(pipe).read())
    reader.start()
    pipe.feed(b"x")
    pipe.abort()
    reader.join(timeout=10)
    assert not reader.is_alive()
    pipe.reader_gone.set()
    for _ in range(5):  # would block forever on a full queue if the reader were waited for
        pipe.feed(b"y")


def test_streaming_conversion_of_a_file_fed_in_pieces(tmp_path: Path) -> None:
    data = b"id,type,name,metadata,media_url\n" + b"".join(
        b'e%d,item,"Name\n%d",,\n' % (n, n) for n in range(20_000))
    conversion = StreamingConversion("f.csv", tmp_path / "out.parquet", Settings(data_dir=tmp_path))
    for start in range(0, len(data), 7_777):  # cuts records, even inside quoted line breaks
        conversion.feed(data[start:start + 7_777])
    result = conversion.wait()
    assert isinstance(result, Prepared) and result.rows == 20_000
    names = pq.read_table(result.path).column("name").to_pylist()
    assert names[0] == "Name\n0" and names[-1] == "Name\n19999"


def test_streaming_conversion_reports_a_bad_header_early(tmp_path: Path) -> None:
    conversion = StreamingConversion("f.csv", tmp_path / "out.parquet", Settings(data_dir=tmp_path))
    conversion.feed(b"user,item\n")
    with pytest.raises(ValidationFailed):
        for _ in range(1000):  # a later chunk raises once the thread has failed
            conversion.feed(b"u,i\n" * 100)
            threading.Event().wait(0.001)
        conversion.wait()
    conversion.abort()


def test_streaming_conversion_returns_failures_for_the_slow_pass(tmp_path: Path) -> None:
    conversion = StreamingConversion("f.csv", tmp_path / "out.parquet", Settings(data_dir=tmp_path))
    conversion.feed(b"type,source_id,target_id,timestamp,metadata\nv,u,i,,\nv,,i,,\n")
    result = conversion.wait()
    assert isinstance(result, Failed) and [(p.row, p.column) for p in result.problems] == [
        (1, "source_id")]
