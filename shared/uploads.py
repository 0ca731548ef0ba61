"""Streaming a ``multipart/form-data`` upload to disk, file by file, under per-file limits.

werkzeug's :class:`~werkzeug.formparser.MultiPartParser` does the parsing (a
well-kept, incremental parser); this module only gives it a stream factory
that writes each file part straight into a temporary file in the request's
work directory, counting bytes as they arrive, so a 1 GiB file is never held
in memory and a file over the byte limit, or one file too many, stops the
upload with 413 before anything is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import MultiPartParser
from werkzeug.http import parse_options_header

from shared.config import Settings
from shared.errors import BadRequest, PayloadTooLarge, ServiceError

#: Bytes read from the socket per step; large enough to keep Python overhead per byte low.
BUFFER_SIZE = 1024 * 1024
#: Largest non-file form field (the tags), in bytes. werkzeug also applies it to each chunk it
#: buffers, so it must stay well above :data:`BUFFER_SIZE`.
MAX_FIELD_BYTES = 4 * BUFFER_SIZE
#: Form field names that carry CSV files.
FILE_FIELDS = ("files", "file")


class Tee(Protocol):
    """Something that sees a file's bytes as they arrive (a streaming conversion)."""

    def feed(self, data: bytes) -> None:
        """A chunk was received (may raise a ServiceError to stop the upload)."""

    def end(self) -> None:
        """The file is complete."""


#: Called for each file part as it starts, with its position and name; may return a Tee.
TeeFactory = Callable[[int, str], Tee | None]


@dataclass
class UploadedFile:
    """One file part, stored on disk."""

    field: str
    filename: str
    path: Path
    size: int
    tee: Tee | None = None


@dataclass
class Received:
    """A parsed multipart body: the text fields and the files on disk."""

    fields: MultiDict[str, str]
    files: list[UploadedFile] = field(default_factory=list)


class _CountingFile:
    """A write-only temporary file that refuses to grow past ``limit`` bytes."""

    def __init__(self, path: Path, limit: int, filename: str, tee: Tee | None) -> None:
        self.path = path
        self.limit = limit
        self.filename = filename
        self.tee = tee
        self.size = 0
        self._fh = open(path, "wb")  # noqa: SIM115 - closed by the owner after parsing

    def write(self, data: bytes) -> int:
        """Append a received chunk (413 past the limit) and pass it to the tee."""
        self.size += len(data)
        if self.size > self.limit:
            raise PayloadTooLarge(
                f"File {self.filename!r} is larger than the limit of {self.limit} bytes; "
                "nothing was stored.",
                code="file_too_large",
                details={"file": self.filename, "max_file_bytes": self.limit},
            )
        written = self._fh.write(data)
        if self.tee is not None:
            self.tee.feed(data)
        return written

    def seek(self, offset: int, whence: int = 0) -> int:
        """Rewind; werkzeug calls it once the part is complete."""
        # werkzeug rewinds a file part once it is complete: the end of this file.
        self._fh.flush()
        if self.tee is not None:
            self.tee.end()
        return self._fh.seek(offset, whence)

    def close(self) -> None:
        """Close the file on disk."""
        self._fh.close()


def _drain(stream: IO[bytes]) -> None:
    """Read and discard the rest of the body, so the client sees our answer, not a reset."""
    try:
        while stream.read(BUFFER_SIZE):
            pass
    except (OSError, ValueError, RequestEntityTooLarge):
        pass


def receive_multipart(
    stream: IO[bytes],
    content_type: str,
    content_length: int | None,
    workdir: Path,
    settings: Settings,
    tee_factory: TeeFactory | None = None,
) -> Received:
    """Parse the body into text fields and files written under ``workdir``.

    ``tee_factory`` may attach a :class:`Tee` to each file part, which then sees the
    bytes as they arrive; the caller ends or aborts the tees.
    """
    _mimetype, options = parse_options_header(content_type)
    boundary = options.get("boundary", "")
    if not boundary:
        raise BadRequest(
            "A multipart/form-data body needs a boundary in its Content-Type.",
            code="invalid_multipart",
        )
    opened: list[_CountingFile] = []

    def factory(
        total_content_length: int | None = None,
        content_type: str | None = None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> Any:
        if len(opened) >= settings.max_files_per_request:
            raise PayloadTooLarge(
                f"At most {settings.max_files_per_request} files per request; nothing was stored.",
                code="too_many_files",
                details={"max_files_per_request": settings.max_files_per_request},
            )
        index = len(opened)
        tee = tee_factory(index, filename or f"files[{index}]") if tee_factory else None
        part = _CountingFile(
            workdir / f"upload-{index}.csv", settings.max_file_bytes, filename or "", tee
        )
        opened.append(part)
        return part

    parser = MultiPartParser(
        factory,
        max_form_memory_size=MAX_FIELD_BYTES,
        cls=MultiDict,
        buffer_size=BUFFER_SIZE,
        max_form_parts=settings.max_files_per_request + 256,
    )
    try:
        fields, files = parser.parse(stream, boundary.encode("latin-1"), content_length)
    except ServiceError:
        _drain(stream)
        raise
    except RequestEntityTooLarge as exc:
        _drain(stream)
        raise PayloadTooLarge(
            f"A form field is larger than {MAX_FIELD_BYTES} bytes, or the body is larger than "
            "this endpoint accepts; nothing was stored.",
            code="payload_too_large",
        ) from exc
    except ValueError as exc:
        raise BadRequest(
            f"The multipart body is malformed: {exc}", code="invalid_multipart"
        ) from exc
    finally:
        for part in opened:
            part.close()
    by_container = {id(p): p for p in opened}
    received = Received(fields=MultiDict())
    for name, storage in files.items(multi=True):
        container = by_container.get(id(storage.stream))
        if container is None:
            continue
        received.files.append(
            UploadedFile(name, storage.filename or f"{name}[{len(received.files)}]",
                         container.path, container.size, container.tee)
        )
    for name, value in fields.items(multi=True):
        if name in FILE_FIELDS:  # CSV text sent as a plain field (curl -F 'files=<x.csv')
            path = workdir / f"field-{len(received.files)}.csv"
            data = value.encode("utf-8")
            path.write_bytes(data)
            received.files.append(UploadedFile(name, f"{name}[{len(received.files)}]", path,
                                               len(data)))
        else:
            received.fields.add(name, value)
    return received
