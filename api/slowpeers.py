"""Slow peers cannot hold the API: timeouts on request bodies and on response writes.

gunicorn reads request bodies and writes responses on blocking sockets with
no timeout, so a client that sends its body at 1 KB/s, or never reads a
streamed answer, keeps a request thread for as long as it likes (issue #19).
Under gunicorn (which hands the socket to the app as ``gunicorn.socket``):

- while the request is read, the socket times out after
  ``RECSYS_BODY_READ_TIMEOUT`` seconds without a byte, and a body must keep
  up an average of :data:`MIN_BODY_RATE` bytes a second once those seconds of
  grace have passed; either way the answer is 408 ``body_timeout`` (JSON) and
  the connection is closed;
- while the response is written, the socket times out after
  ``RECSYS_STREAM_WRITE_TIMEOUT`` seconds in which the reader took nothing, and
  a streamed answer must be taken at :data:`MIN_BODY_RATE` bytes a second on
  average after those seconds of grace (:class:`PacedOutput`); either way the
  connection ends before the last chunk, so the client sees an incomplete
  answer, never a short one that looks whole.

gunicorn sets its sockets back to blocking between requests, so the
timeouts last for one request. The same rules sit in front of gunicorn in
the compose deployment, where nginx buffers bodies and answers
(``deploy/nginx.conf``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import socket
import struct
import termios
import time
from collections.abc import Generator, Iterable
from typing import IO, Any

from flask import Flask, Response, g, has_app_context, request

from shared.errors import ServiceError

log = logging.getLogger(__name__)

#: Bytes per write of a streamed answer (4 s of a 1 KB/s reader between pace checks).
STREAM_PIECE = 4096

#: Bytes a second a request body must average, after the grace of RECSYS_BODY_READ_TIMEOUT.
MIN_BODY_RATE = 16 * 1024


class BodyTimeout(ServiceError):
    """The request body arrived too slowly (408); nothing was stored."""

    status = 408
    code = "body_timeout"


class Pace:
    """Checks that a body keeps arriving: an idle limit and an average rate after a grace."""

    def __init__(self, timeout: float, min_rate: float = MIN_BODY_RATE) -> None:
        self.timeout, self.min_rate = timeout, min_rate
        self.started = time.monotonic()
        self.received = 0

    def error(self, idle: bool) -> BodyTimeout:
        """The 408 to answer with."""
        elapsed = time.monotonic() - self.started
        why = (f"no data arrived for {self.timeout:g} s" if idle else
               f"{self.received} bytes arrived in {elapsed:.0f} s, below the "
               f"{self.min_rate:.0f} bytes a second a body must average after "
               f"{self.timeout:g} s")
        return BodyTimeout(f"The request body came too slowly ({why}); nothing was stored.",
                           details={"received_bytes": self.received,
                                    "seconds": round(elapsed, 1),
                                    "timeout_seconds": self.timeout,
                                    "min_bytes_per_second": self.min_rate})

    def rate(self) -> float:
        """Bytes a second so far."""
        return self.received / max(time.monotonic() - self.started, 1e-3)

    def add(self, count: int) -> None:
        """Count ``count`` more bytes; BodyTimeout when the average has fallen too low."""
        self.received += count
        late = time.monotonic() - self.started - self.timeout
        if late > 0 and self.received < late * self.min_rate:
            raise self.error(idle=False)


class PacedInput:
    """``wsgi.input`` whose reads obey a :class:`Pace` (bodies not read by api.body)."""

    def __init__(self, raw: IO[bytes], pace: Pace) -> None:
        self._raw, self._pace = raw, pace

    def _count(self, data: bytes) -> bytes:
        try:
            self._pace.add(len(data))
        except BodyTimeout:
            self._give_up()
            raise
        return data

    def _give_up(self) -> None:
        # gunicorn then closes the connection instead of draining the rest of the body
        if hasattr(self._raw, "failed"):
            self._raw.failed = True

    def read(self, size: int = -1) -> bytes:
        """Read like the stream it wraps, at most a second's worth at the body's pace.

        gunicorn's ``read(n)`` waits for all ``n`` bytes, so a large read of a slow
        body would pass its deadline unnoticed: ask for about what arrives in a second.
        """
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        piece = max(4096, int(self._pace.rate()))
        try:
            return self._count(self._raw.read(min(size, piece)))
        except TimeoutError as exc:
            self._give_up()
            raise self._pace.error(idle=True) from exc

    def readline(self, size: int = -1) -> bytes:
        """Read a line like the stream it wraps."""
        try:
            return self._count(self._raw.readline(size))
        except TimeoutError as exc:
            self._give_up()
            raise self._pace.error(idle=True) from exc

    def __iter__(self) -> PacedInput:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def unsent(sock: Any) -> int:
    """Bytes written to ``sock`` that its peer has not acknowledged yet (Linux; else 0).

    The kernel's send buffer grows to megabytes: without this, a reader that takes
    1 KB a second would look fast for as long as the buffer keeps filling.
    """
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError, AttributeError, TypeError):
        return 0
    return int(struct.unpack("i", raw)[0])


class PacedOutput:
    """A streamed response body that ends the connection when its reader falls behind.

    gunicorn asks for the next chunk only once the previous one is written; the
    bytes the reader has taken are those written less those still unacknowledged
    in the kernel's send buffer (:func:`unsent`). Past the grace of
    ``RECSYS_STREAM_WRITE_TIMEOUT`` seconds, a reader that has taken less than
    :data:`MIN_BODY_RATE` bytes a second on average is cut off: the socket is
    shut down before the last chunk, so the client sees an incomplete answer
    (never a short one that looks whole). A reader that takes nothing at all
    is stopped by the socket's write timeout instead.
    """

    def __init__(self, chunks: Iterable[Any], sock: Any, timeout: float,
                 min_rate: float = MIN_BODY_RATE) -> None:
        self._source = chunks
        self._chunks: Generator[Any, None, None] = self._pieces(chunks, STREAM_PIECE)
        self._sock = sock
        self._timeout, self._min_rate = timeout, min_rate
        self._started = time.monotonic()
        self.sent = 0
        self.cut = False

    @staticmethod
    def _pieces(chunks: Iterable[Any], size: int) -> Generator[Any, None, None]:
        # Small pieces: the pace is checked between writes, and a write into a full
        # send buffer lasts as long as the reader takes to read the piece.
        for chunk in chunks:
            if len(chunk) <= size:
                yield chunk
                continue
            view = memoryview(chunk.encode() if isinstance(chunk, str) else chunk)
            for start in range(0, len(view), size):
                yield bytes(view[start:start + size])

    def __iter__(self) -> PacedOutput:
        return self

    def __next__(self) -> Any:
        late = time.monotonic() - self._started - self._timeout
        if late > 0 and self.sent - unsent(self._sock) < late * self._min_rate:
            self.cut = True
            log.warning("ending a streamed answer: its reader took %d bytes in %.0f s",
                        self.sent, time.monotonic() - self._started)
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self.close()
            raise StopIteration
        chunk = next(self._chunks)
        self.sent += len(chunk)
        return chunk

    def close(self) -> None:
        """Close the wrapped generator (ends its scoring threads)."""
        self._chunks.close()
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


class _QuietWriteTimeouts(logging.Filter):
    """gunicorn logs a write timeout as a socket error with a traceback: one line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Turn a write timeout's traceback into one warning line; pass everything else."""
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, TimeoutError):
            record.msg = ("a reader took nothing for RECSYS_STREAM_WRITE_TIMEOUT seconds; "
                          "its answer was ended")
            record.args = None
            record.exc_info = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def current_pace() -> Pace | None:
    """The pace of this request's body (None outside gunicorn)."""
    if not has_app_context():
        return None
    pace: Pace | None = g.get("body_pace")
    return pace


def init_app(app: Flask) -> None:
    """Install the read timeout before each request and the write timeout after it."""
    settings = app.extensions["recsys"].settings
    gunicorn_log = logging.getLogger("gunicorn.error")
    if not any(isinstance(f, _QuietWriteTimeouts) for f in gunicorn_log.filters):
        gunicorn_log.addFilter(_QuietWriteTimeouts())

    @app.before_request
    def _read_timeout() -> None:
        sock = request.environ.get("gunicorn.socket")
        if sock is None or not hasattr(sock, "settimeout"):
            return
        sock.settimeout(settings.body_read_timeout)
        pace = Pace(settings.body_read_timeout)
        g.body_pace = pace
        if request.mimetype != "multipart/form-data":  # multipart reads in api.body
            request.environ["wsgi.input"] = PacedInput(request.environ["wsgi.input"], pace)

    @app.after_request
    def _write_timeout(response: Response) -> Response:
        sock = request.environ.get("gunicorn.socket")
        if sock is not None and hasattr(sock, "settimeout"):
            sock.settimeout(settings.stream_write_timeout)
            if response.is_streamed:
                response.response = PacedOutput(response.response, sock,
                                                 settings.stream_write_timeout)
        if response.status_code == BodyTimeout.status:
            response.headers["Connection"] = "close"  # the rest of the body is never read
        return response
