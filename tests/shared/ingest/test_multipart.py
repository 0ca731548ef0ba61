"""Receiving multipart bodies: parts across read boundaries, empty parts, limits, bad bodies."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest

from shared.config import Settings
from shared.errors import BadRequest, PayloadTooLarge
from shared.ingest.multipart_parser import MAX_FIELD_BYTES, Received, receive_multipart

BOUNDARY = "b0undary-42"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


class Trickle(io.BytesIO):
    """A body that arrives at most ``step`` bytes per read, like a slow socket."""

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__(data)
        self.step = step

    def read(self, size: int | None = -1) -> bytes:
        """At most ``step`` bytes."""
        return super().read(self.step if size is None or size < 0 else min(size, self.step))


def part(name: str, body: bytes, filename: str | None = None, blank: bool = True) -> bytes:
    """One part; ``blank=False`` leaves out the empty line of an empty body (werkzeug does)."""
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\nContent-Type: text/csv\r\n"
    return head.encode() + (b"\r\n" + body if blank else b"") + b"\r\n"


def body(*parts: bytes) -> bytes:
    """Parts and the closing delimiter."""
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


class Recorder:
    """A tee that keeps what it saw."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ended = False

    def feed(self, data: bytes) -> None:
        """Keep the chunk."""
        self.data += data

    def end(self) -> None:
        """Remember the end."""
        self.ended = True


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Small limits."""
    return Settings(data_dir=tmp_path / "var", max_file_bytes=4096, max_files_per_request=3)


def receive(data: bytes, tmp_path: Path, settings: Settings, step: int = 1 << 20,
            length: int | None = None, tees: dict[str, Recorder] | None = None) -> Received:
    def factory(index: int, filename: str) -> Recorder:
        assert tees is not None
        tees[filename] = Recorder()
        return tees[filename]

    return receive_multipart(Trickle(data, step), CONTENT_TYPE,
                             len(data) if length is None else length, tmp_path, settings,
                             factory if tees is not None else None)


@pytest.mark.parametrize("step", [1, 3, 17, 64, 1 << 20])
def test_files_and_fields_arrive_whole_however_the_body_is_cut(
    tmp_path: Path, settings: Settings, step: int
) -> None:
    # given a body with tags, two files (one with CRLF and a boundary-like line) and a field
    # CSV, read a few bytes at a time
    first = b"id,type,name,metadata,media_url\r\nx,,\"--b0undary\",,\r\n\r\n"
    second = b"type,source_id,target_id,timestamp,metadata\nv,u,i,,\n"
    data = body(part("tags", b"a,b"), part("files", first, "e.csv"), part("tags", b"c"),
                part("file", second, "i.csv"), part("files", b"id,type\n"))
    tees: dict[str, Recorder] = {}
    # when it is received
    got = receive(data, tmp_path, settings, step=step, tees=tees)
    # then every file is on disk byte for byte, in order, and its tee saw the same and ended
    assert [(f.field, f.filename, f.size) for f in got.files] == [
        ("files", "e.csv", len(first)), ("file", "i.csv", len(second)),
        ("files", "files[2]", 8)]
    assert [f.path.read_bytes() for f in got.files] == [first, second, b"id,type\n"]
    assert {name: (bytes(t.data), t.ended) for name, t in tees.items()} == {
        "e.csv": (first, True), "i.csv": (second, True), "files[2]": (b"id,type\n", True)}
    assert got.fields.getlist("tags") == ["a,b", "c"]


def test_empty_files_with_and_without_the_blank_line(tmp_path: Path, settings: Settings) -> None:
    data = body(part("files", b"", "werkzeug.csv", blank=False), part("tags", b"t"),
                part("files", b"", "curl.csv"), part("files", b"", "last.csv", blank=False))
    got = receive(data, tmp_path, settings)
    assert [(f.filename, f.size) for f in got.files] == [
        ("werkzeug.csv", 0), ("curl.csv", 0), ("last.csv", 0)]
    assert got.fields.getlist("tags") == ["t"]


def test_a_file_over_the_limit_stops_the_upload_and_the_rest_is_drained(
    tmp_path: Path, settings: Settings
) -> None:
    data = body(part("files", b"x" * 5000, "big.csv"), part("tags", b"t"))
    stream = Trickle(data + b"NEXT REQUEST", 1000)
    with pytest.raises(PayloadTooLarge) as caught:
        receive_multipart(stream, CONTENT_TYPE, len(data), tmp_path, settings)
    assert caught.value.code == "file_too_large"
    # the whole body was read (the client sees the answer), nothing past it
    assert stream.getvalue()[stream.tell():] == b"NEXT REQUEST"


def test_too_many_files_and_fields_too_large(tmp_path: Path, settings: Settings) -> None:
    files = [part("files", b"id\n", f"{n}.csv") for n in range(4)]
    with pytest.raises(PayloadTooLarge) as caught:
        receive(body(*files), tmp_path, settings)
    assert caught.value.code == "too_many_files"
    # a CSV sent as a plain field counts as a file
    with pytest.raises(PayloadTooLarge) as caught:
        receive(body(*files[:3], part("files", b"id\n")), tmp_path, settings)
    assert caught.value.code == "too_many_files"
    half = b"t" * (MAX_FIELD_BYTES // 2 + 1)
    with pytest.raises(PayloadTooLarge) as caught:
        receive(body(part("tags", half), part("tags", half)), tmp_path, settings)
    assert caught.value.code == "payload_too_large"
    many = dataclasses.replace(settings, max_files_per_request=1)
    with pytest.raises(PayloadTooLarge):
        receive(body(*[part("tags", b"t")] * 300), tmp_path, many)


@pytest.mark.parametrize("data", [
    body(part("files", b"id\n", "f.csv"))[:-20],  # cut off before the closing delimiter
    b"--" + BOUNDARY.encode() + b"\r\n",
    b"not multipart at all",
    b"",
    body(b"--" + BOUNDARY.encode() + b"\r\nContent-Type: text/csv\r\n\r\nx\r\n"),  # no name
    body(b"--" + BOUNDARY.encode() + b"\r\nBad Header: x\r\n\r\nx\r\n"),
])
def test_malformed_bodies_are_400(tmp_path: Path, settings: Settings, data: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        receive(data, tmp_path, settings, step=7)
    assert caught.value.code == "invalid_multipart"


def test_no_boundary_is_400(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(BadRequest):
        receive_multipart(io.BytesIO(b""), "multipart/form-data", 0, tmp_path, settings)


def test_reads_exactly_content_length_or_to_the_end(tmp_path: Path, settings: Settings) -> None:
    data = body(part("files", b"id\nx\n", "f.csv"))
    stream = Trickle(data + b"GET / HTTP/1.1", 5)
    got = receive_multipart(stream, CONTENT_TYPE, len(data), tmp_path, settings)
    assert got.files[0].path.read_bytes() == b"id\nx\n"
    assert stream.getvalue()[stream.tell():] == b"GET / HTTP/1.1"
    # without a length (a chunked body the server ends), up to the end of the stream
    got = receive_multipart(io.BytesIO(data), CONTENT_TYPE, None, tmp_path, settings)
    assert got.files[0].size == 5
