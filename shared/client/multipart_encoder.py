"""A ``multipart/form-data`` upload body streamed from disk.

``requests`` builds multipart bodies in memory, which a 1 GiB CSV must not be,
and ``requests-toolbelt`` (which streams them) is not worth a dependency for
one small class. ``requests`` sends an object with ``__iter__`` and
``__len__`` as a streamed body with a ``Content-Length`` header, one chunk at
a time.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

#: Bytes read from disk per chunk of a streamed upload.
CHUNK_BYTES = 1 << 20


class MultipartFiles:
    """A body of ``tags`` fields and CSV ``files`` parts, read from disk as it is sent."""

    def __init__(self, paths: Sequence[Path], tags: Sequence[str]) -> None:
        self.boundary = "recsys-" + secrets.token_hex(16)
        self.paths = [Path(p) for p in paths]
        self._parts: list[tuple[bytes, Path | None]] = []
        for tag in tags:
            head = (
                f"--{self.boundary}\r\n"
                'Content-Disposition: form-data; name="tags"\r\n\r\n'
                f"{tag}\r\n"
            ).encode()
            self._parts.append((head, None))
        for path in self.paths:
            name = path.name.replace('"', "%22").replace("\r", "").replace("\n", "")
            head = (
                f"--{self.boundary}\r\n"
                f'Content-Disposition: form-data; name="files"; filename="{name}"\r\n'
                "Content-Type: text/csv\r\n\r\n"
            ).encode()
            self._parts.append((head, path))
        self._tail = f"--{self.boundary}--\r\n".encode()
        self._length = len(self._tail) + sum(
            len(head) + (os.path.getsize(path) + 2 if path is not None else 0)
            for head, path in self._parts
        )

    @property
    def content_type(self) -> str:
        """The header value naming this body's boundary."""
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        for head, path in self._parts:
            yield head
            if path is not None:
                with path.open("rb") as fh:
                    while chunk := fh.read(CHUNK_BYTES):
                        yield chunk
                yield b"\r\n"
        yield self._tail
