"""gunicorn's own error pages (answered before the app sees the request) are contract JSON."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from shared.stack.embedded import EmbeddedServer
from tests.helpers.servers import running_gunicorn


@pytest.fixture(scope="module")
def port(redis_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[int]:
    tmp: Path = tmp_path_factory.mktemp("gunicorn-errors")
    env = {"RECSYS_DATA_DIR": str(tmp / "var"), "RECSYS_REDIS_URL": redis_server.url}
    with running_gunicorn(env, tmp / "gunicorn.log", "--workers", "1") as base:
        yield int(base.rsplit(":", 1)[1])


def _exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; the status, headers and body of the answer (read to the close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def _check_error(headers: dict[str, str], body: bytes, code: str) -> dict[str, object]:
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    parsed = orjson.loads(body)
    assert set(parsed) == {"error"} and set(parsed["error"]) == {"code", "message", "details"}
    assert parsed["error"]["code"] == code
    return parsed["error"]  # type: ignore[no-any-return]


def test_a_request_line_over_4_kb_gets_a_json_414(port: int) -> None:
    path = "/v1/recommender/recommended_items?model_id=m&source_id=" + "x" * 5000
    status, headers, body = _exchange(
        port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    assert status == 414
    error = _check_error(headers, body, "uri_too_long")
    assert "POST" in str(error["message"])


def test_a_malformed_request_gets_a_json_400(port: int) -> None:
    status, headers, body = _exchange(port, b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n")
    assert status == 400
    _check_error(headers, body, "bad_request")


def test_ordinary_requests_are_untouched(port: int) -> None:
    status, headers, body = _exchange(
        port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert status == 200 and headers["content-type"] == "application/json"
    assert orjson.loads(body) == {"status": "ok"}
