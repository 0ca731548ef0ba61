"""Guards on the gunicorn internals api/body.py reads an upload's socket through.

Each test builds gunicorn's own request-body objects over a real socket pair, as a
gunicorn worker does, so a gunicorn release that changes them fails here, naming the
class and attribute, instead of in an upload.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import gunicorn
import pytest
from flask import Request
from gunicorn.http.body import Body, LengthReader
from gunicorn.http.unreader import SocketUnreader
from werkzeug.test import EnvironBuilder

from api.body import INTERNALS, SocketBody, body_stream, missing_internals


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    try:
        yield server, client
    finally:
        server.close()
        client.close()


def _gunicorn_body(sock: socket.socket, length: int) -> Body:
    """wsgi.input as gunicorn builds it for a request with a Content-Length."""
    return Body(LengthReader(SocketUnreader(sock), length))


def _request(body: Body, length: int) -> Request:
    environ = EnvironBuilder(method="POST", path="/").get_environ()
    environ["wsgi.input"] = body
    environ["CONTENT_LENGTH"] = str(length)
    return Request(environ)


def test_gunicorn_still_has_every_internal_the_socket_reader_uses(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    # given gunicorn's body objects for a request of known length
    body = _gunicorn_body(sockets[0], 10)
    # then each class and attribute api/body.py reads is there
    missing = missing_internals(body)
    assert missing == [], (
        f"gunicorn {gunicorn.__version__} changed the internals api/body.py reads: "
        f"{', '.join(missing)}; uploads fall back to the slower WSGI stream until "
        "api/body.py (and the gunicorn pin in pyproject.toml) is updated"
    )
    assert {owner for owner, _, _ in INTERNALS} == {
        "gunicorn.http.body.Body", "gunicorn.http.body.LengthReader",
        "gunicorn.http.unreader.SocketUnreader",
    }


def test_socket_reader_reads_exactly_the_body_and_gives_back_what_follows(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    # given a body of 10 bytes, 4 of them read ahead by gunicorn with 3 of the next request
    server, client = sockets
    body = _gunicorn_body(server, 10)
    body.reader.unreader.unread(b"abcd")
    client.sendall(b"efghij" + b"NEXT")
    # when the body is read through the socket
    with SocketBody(body) as raw:
        data = b""
        while chunk := raw.read(3):
            data += chunk
    # then it is the body, gunicorn's count of unread bytes is 0, and nothing is lost
    assert data == b"abcdefghij"
    assert body.reader.length == 0
    assert server.recv(16) == b"NEXT"


def test_read_ahead_past_the_body_is_given_back_to_gunicorn(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    # given gunicorn read the whole body and the start of a pipelined request
    body = _gunicorn_body(sockets[0], 3)
    body.reader.unreader.unread(b"xyzGET /")
    # when the body is read
    with SocketBody(body) as raw:
        assert raw.read() == b"xyz"
    # then the next request's bytes are still gunicorn's to parse
    assert body.reader.unreader.take_buffered() == b"GET /"


def test_a_missing_internal_falls_back_to_the_wsgi_stream(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    # given a gunicorn body lacking an attribute the socket reader needs
    body = _gunicorn_body(sockets[0], 5)
    del body.failed
    request = _request(body, 5)
    # when the upload opens its body
    with body_stream(request) as stream:
        # then it reads the WSGI stream, not the socket
        assert not isinstance(stream, SocketBody)
    assert missing_internals(body) == ["gunicorn.http.body.Body.failed"]


def test_a_complete_gunicorn_body_is_read_from_the_socket(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    # given an intact gunicorn body within the request's limit
    server, client = sockets
    body = _gunicorn_body(server, 5)
    client.sendall(b"hello")
    request = _request(body, 5)
    # when the upload opens its body
    with body_stream(request) as stream:
        # then the socket reader serves it
        assert isinstance(stream, SocketBody)
        assert stream.read() == b"hello"
