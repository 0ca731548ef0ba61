"""gunicorn's own error pages (400, 414, 431, ...) in the contract's JSON error shape.

gunicorn answers some requests before the application sees them: a request
line longer than ``limit_request_line`` (4094 bytes by default) gets 414, bad
header lines get 400 or 431. It writes those pages with
``gunicorn.util.write_error(sock, status, reason, message)``, a fixed HTML
page, and offers no setting or hook to change it (benoitc/gunicorn#993). The
worker's error handler looks that function up on the module at each call, so
:func:`install` (called from the ``post_worker_init`` server hook in
:mod:`api.gunicorn_conf`) replaces it in the worker process with
:func:`write_json_error`, which keeps gunicorn's status line and closes the
connection exactly as gunicorn does, with a JSON body.
"""

from __future__ import annotations

import socket

import orjson

#: Machine codes of the statuses gunicorn answers itself.
CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}

#: What to do about each, in the contract's human sentence.
MESSAGES = {
    400: "The request is not valid HTTP: {detail}.",
    414: "The request line (method, path and query) is too long: {detail}. Send long "
         "parameters in a POST body instead.",
    431: "The request headers are too large or too many: {detail}.",
    500: "The server could not handle the request.",
}


def error_page(status: int, reason: str, detail: str) -> bytes:
    """A whole HTTP/1.1 response (status line, headers, JSON body) for gunicorn's error."""
    template = MESSAGES.get(status, "{detail}.")
    message = template.format(detail=detail.rstrip(".") or reason)
    body = orjson.dumps({"error": {
        "code": CODES.get(status, "http_error"),
        "message": message,
        "details": {"status": status, "reason": reason},
    }})
    head = (f"HTTP/1.1 {status} {reason}\r\n"
            "Connection: close\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Drop-in for ``gunicorn.util.write_error``: the same response, as contract JSON."""
    from gunicorn import util

    util.write_nonblock(sock, error_page(status_int, reason, mesg))


def install() -> None:
    """Make this process's gunicorn write its own error pages as JSON."""
    from gunicorn import util

    util.write_error = write_json_error
