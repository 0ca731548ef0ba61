"""Reading a large request body straight from gunicorn's socket.

gunicorn's ``wsgi.input`` passes every received chunk through ``BytesIO``
buffers (written, read whole, sliced), and werkzeug's ``LimitedStream`` copies
it once more; for the 82 MB body of ``bench/ingest.py`` that took 0.07-0.09 CPU
seconds against 0.013-0.019 s for ``recv_into`` on the socket, all of it
holding the GIL that the threads converting the same upload need. gunicorn
offers no faster input stream, so uploads read the socket themselves when they
can (:func:`open_body`): under gunicorn, for a body with a ``Content-Length``.

The reader behaves as gunicorn's own would: the bytes gunicorn read ahead come
first, its count of the body still unread is kept exact (so gunicorn drains
whatever the application leaves before it reads the next request on the
connection), bytes beyond the body are given back to it, and a failed read
marks the connection as not reusable. Anywhere else (the Flask test client,
chunked bodies) the WSGI stream is used as it is.

This reaches into gunicorn's private request classes (:data:`INTERNALS` lists
every class and attribute used), so ``pyproject.toml`` pins gunicorn to the
release series this was tested with, ``tests/api/test_body_gunicorn.py`` fails
naming the internal a new release changed, and :func:`body_stream` checks them
on each body and falls back to the WSGI stream when one is missing.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from flask import Request
from werkzeug.exceptions import ClientDisconnected

from api.slowpeers import Pace, current_pace
from shared.errors import ServiceError

try:
    from gunicorn.http.body import Body, LengthReader
    from gunicorn.http.unreader import SocketUnreader
except ImportError:  # pragma: no cover - gunicorn is a dependency, but not of every caller
    Body = LengthReader = SocketUnreader = None


#: The gunicorn internals :class:`SocketBody` uses: (object, attribute, callable?).
INTERNALS: tuple[tuple[str, str, bool], ...] = (
    ("gunicorn.http.body.Body", "reader", False),
    ("gunicorn.http.body.Body", "buf", False),
    ("gunicorn.http.body.Body", "failed", False),
    ("gunicorn.http.body.LengthReader", "unreader", False),
    ("gunicorn.http.body.LengthReader", "length", False),
    ("gunicorn.http.unreader.SocketUnreader", "sock", False),
    ("gunicorn.http.unreader.SocketUnreader", "take_buffered", True),
    ("gunicorn.http.unreader.SocketUnreader", "unread", True),
)


def missing_internals(body: Any) -> list[str]:
    """The gunicorn internals (``class.attribute``) that ``body`` lacks; [] when all are there.

    ``body`` is gunicorn's ``wsgi.input`` for a body with a ``Content-Length``.
    """
    if Body is None:
        return ["gunicorn.http.body.Body (gunicorn is not installed)"]
    if not isinstance(body, Body):
        return ["gunicorn.http.body.Body (wsgi.input is another class)"]
    reader = getattr(body, "reader", None)
    unreader = getattr(reader, "unreader", None)
    holders = {
        "gunicorn.http.body.Body": body,
        "gunicorn.http.body.LengthReader": reader if isinstance(reader, LengthReader) else None,
        "gunicorn.http.unreader.SocketUnreader":
            unreader if isinstance(unreader, SocketUnreader) else None,
    }
    missing = []
    for owner, attr, is_method in INTERNALS:
        holder = holders[owner]
        if holder is None:
            missing.append(f"{owner} (not the class of the object found there)")
            continue
        value = getattr(holder, attr, None)
        if value is None or (is_method and not callable(value)):
            missing.append(f"{owner}.{attr}")
    return sorted(set(missing))


class SocketBody(io.RawIOBase):
    """The rest of a gunicorn request body of known length, read from its socket."""

    def __init__(self, body: Any, pace: Pace | None = None) -> None:
        super().__init__()
        self._body = body
        self._pace = pace
        self._reader = body.reader
        unreader = self._reader.unreader
        self._unreader = unreader
        self._sock: socket.socket = unreader.sock
        ahead = unreader.take_buffered()
        if len(ahead) > self._reader.length:  # a pipelined request follows: not ours
            unreader.unread(ahead[self._reader.length:])
            ahead = ahead[: self._reader.length]
        self._ahead = memoryview(ahead)

    @property
    def remaining(self) -> int:
        """Bytes of the body not read yet."""
        return int(self._reader.length)

    def readable(self) -> bool:
        """Readable like a file."""
        return True

    def readinto(self, target: Any) -> int:
        """Read up to ``len(target)`` bytes; 0 at the end of the body."""
        want = min(len(target), self.remaining)
        if want <= 0:
            return 0
        if len(self._ahead):
            got = min(want, len(self._ahead))
            target[:got] = self._ahead[:got]
            self._ahead = self._ahead[got:]
        else:
            try:
                got = self._sock.recv_into(target, want)
            except TimeoutError as exc:  # the read timeout of api.slowpeers
                self._body.failed = True
                if self._pace is None:
                    raise ClientDisconnected() from exc
                raise self._pace.error(idle=True) from exc
            except OSError as exc:  # reset, or gunicorn's socket timeout: as werkzeug does
                self._body.failed = True
                raise ClientDisconnected() from exc
            if not got:  # the client went away before sending the whole body
                self._body.failed = True
                return 0
        self._reader.length -= got
        if self._pace is not None:
            try:
                self._pace.add(got)
            except ServiceError:
                self._body.failed = True
                raise
        return got

    def close(self) -> None:
        """Give bytes read ahead and not used back to gunicorn, which drains the rest."""
        if not self.closed and len(self._ahead):
            self._unreader.unread(bytes(self._ahead))
            self._ahead = memoryview(b"")
        super().close()


@contextmanager
def body_stream(request: Request) -> Iterator[IO[bytes]]:
    """The request body: read from gunicorn's socket when possible, else the WSGI stream.

    A body over ``request.max_content_length`` always gets werkzeug's stream, which
    refuses it with ``RequestEntityTooLarge`` as usual.
    """
    body = request.environ.get("wsgi.input")
    limit = request.max_content_length
    if (
        Body is not None
        and isinstance(body, Body)
        and isinstance(getattr(body, "reader", None), LengthReader)
        and request.content_length is not None
        and (limit is None or request.content_length <= limit)
        and not missing_internals(body)
        and body.buf.tell() == 0
    ):
        with SocketBody(body, current_pace()) as raw:
            yield raw  # type: ignore[misc]
    else:
        yield request.stream
