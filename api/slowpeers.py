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
  gunicorn ends the connection (a streamed answer simply stops).

gunicorn sets its sockets back to blocking between requests, so the
timeouts last for one request. The same rules sit in front of gunicorn in
the compose deployment, where nginx buffers bodies and answers
(``deploy/nginx.conf``).
"""

from __future__ import annotations

import time
from typing import IO

from flask import Flask, Response, g, request

from shared.errors import ServiceError

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
        self._pace.add(len(data))
        return data

    def read(self, size: int = -1) -> bytes:
        """Read like the stream it wraps."""
        try:
            return self._count(self._raw.read(size))
        except TimeoutError as exc:
            raise self._pace.error(idle=True) from exc

    def readline(self, size: int = -1) -> bytes:
        """Read a line like the stream it wraps."""
        try:
            return self._count(self._raw.readline(size))
        except TimeoutError as exc:
            raise self._pace.error(idle=True) from exc

    def __iter__(self) -> PacedInput:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def current_pace() -> Pace | None:
    """The pace of this request's body (None outside gunicorn)."""
    pace: Pace | None = g.get("body_pace")
    return pace


def init_app(app: Flask) -> None:
    """Install the read timeout before each request and the write timeout after it."""
    settings = app.extensions["recsys"].settings

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
        if response.status_code == BodyTimeout.status:
            response.headers["Connection"] = "close"  # the rest of the body is never read
        return response
