"""Slow peers under gunicorn: slow bodies get a JSON 408, slow readers are cut off (issue #19).

The API runs as the Procfile runs it, with 2-second timeouts so the tests are quick.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import orjson
import pytest
import redis
import requests

from shared.keys import SCOPES, create_key
from shared.stack.embedded import EmbeddedServer
from shared.storage import open_storage
from tests.helpers.models import make_artifact, register
from tests.helpers.servers import running_gunicorn
from tests.helpers.waiting import log_count, wait_until

TIMEOUT = 2.0
P = "/v1/recommender"
#: What the server logs when it ends a streamed answer to a reader that fell behind.
CUT_OFF = ("ending a streamed answer", "a reader took nothing for RECSYS_STREAM_WRITE_TIMEOUT")


class Api(NamedTuple):
    """The API under test: base URL, port, an all-scope key of tenant ``slow``."""

    base: str
    port: int
    key: str
    log: Path


@pytest.fixture(scope="module")
def api(redis_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("slowpeers")
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    key, _ = create_key(r, "slow", list(SCOPES))
    storage = open_storage(str(tmp / "var" / "storage"))
    # 4,000 sources x 100 recommendations: megabytes of CSV, far past any socket buffer
    register(r, storage, "slow", "big", make_artifact(n_sources=4000, n_targets=300))
    env = {"RECSYS_DATA_DIR": str(tmp / "var"), "RECSYS_REDIS_URL": redis_server.url,
           "RECSYS_BODY_READ_TIMEOUT": str(TIMEOUT),
           "RECSYS_STREAM_WRITE_TIMEOUT": str(TIMEOUT), "RECSYS_RATE_LIMIT": "off"}
    log = tmp / "gunicorn.log"
    with running_gunicorn(env, log, "--workers", "1", "--threads", "4") as base:
        yield Api(base, int(base.rsplit(":", 1)[1]), key, log)


def _connect(api: Api, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", api.port))
    return sock


def _response(sock: socket.socket) -> tuple[int, dict[str, object]]:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body) if body else {}


def _upload_head(api: Api, content_type: str, length: int) -> bytes:
    return (f"POST {P}/data_batch HTTP/1.1\r\nHost: t\r\napikey: {api.key}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n").encode()


def _trickle(sock: socket.socket, piece: bytes, seconds: float) -> float:
    """Send ``piece`` every 0.25 s until the server answers; seconds until it did."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            sock.sendall(piece)
        except OSError:
            break
        ready, _, _ = select.select([sock], [], [], 0.25)
        if ready:
            break
    return time.monotonic() - started


def test_a_slow_multipart_upload_is_cut_off_with_a_json_408_and_nothing_stored(
    api: Api,
) -> None:
    boundary = "slowpeer"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            "filename=\"e.csv\"\r\nContent-Type: text/csv\r\n\r\n"
            "type,source_id,target_id,timestamp,metadata\n").encode()
    with _connect(api) as sock:
        sock.sendall(_upload_head(api, f"multipart/form-data; boundary={boundary}", 2_000_000)
                     + part)
        # 256 bytes every 0.25 s: 1 KB/s
        took = _trickle(sock, b"view,u1,i1,2026-01-01T00:00:00Z,\n" * 8, 30)
        status, body = _response(sock)
    assert status == 408, body
    assert body["error"]["code"] == "body_timeout"  # type: ignore[index]
    assert TIMEOUT < took < TIMEOUT + 4
    listed = requests.get(f"{api.base}{P}/data_batch", headers={"apikey": api.key}, timeout=10)
    assert listed.json() == []


def test_an_upload_that_stops_sending_is_cut_off_after_the_read_timeout(api: Api) -> None:
    with _connect(api) as sock:
        sock.sendall(_upload_head(api, "application/json", 1000) + b'{"entities": [')
        started = time.monotonic()
        status, body = _response(sock)
        took = time.monotonic() - started
    assert status == 408 and body["error"]["code"] == "body_timeout"  # type: ignore[index]
    assert took < TIMEOUT + 3


def test_a_slow_json_body_is_cut_off_too(api: Api) -> None:
    with _connect(api) as sock:
        sock.sendall(_upload_head(api, "application/json", 1_000_000) + b'{"entities": [')
        took = _trickle(sock, b'{"id": "x", "type": "item"},' * 8, 30)
        status, body = _response(sock)
    assert status == 408 and body["error"]["code"] == "body_timeout"  # type: ignore[index]
    assert took < TIMEOUT + 4


def _bulk_request(api: Api) -> bytes:
    return (f"GET {P}/recommended_items?model_id=big&max_recommendations=100"
            f"&output_format=csv HTTP/1.1\r\nHost: t\r\napikey: {api.key}\r\n\r\n").encode()


def _drained_whole(sock: socket.socket) -> bool:
    """Read what is left at full speed: True when the chunked answer ended properly."""
    tail = b""
    sock.settimeout(10)
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except OSError:
            return False
        if not chunk:
            return tail.endswith(b"0\r\n\r\n")
        tail = (tail + chunk)[-16:]


def test_a_bulk_reader_that_reads_slowly_is_cut_off_and_others_are_served(api: Api) -> None:
    whole = requests.get(f"{api.base}{P}/recommended_items?model_id=big&max_recommendations=100"
                         "&output_format=csv", headers={"apikey": api.key}, timeout=60)
    assert whole.status_code == 200 and len(whole.content) > 5_000_000
    # four slow readers: as many as the server has threads
    socks = [_connect(api, rcvbuf=4096) for _ in range(4)]
    try:
        for sock in socks:
            sock.sendall(_bulk_request(api))
        started = time.monotonic()
        while time.monotonic() - started < TIMEOUT * 3:  # 1 KB a second each
            for sock in socks:
                sock.recv(256)
            time.sleep(0.25)
        # the readers held every thread; once cut, the API answers others
        quick = requests.get(f"{api.base}{P}/models", headers={"apikey": api.key}, timeout=20)
        assert quick.status_code == 200
        with ThreadPoolExecutor(4) as pool:
            ends = list(pool.map(_drained_whole, socks))
    finally:
        for sock in socks:
            sock.close()
    assert ends == [False] * 4, "a slow reader got the whole answer: it was never cut off"


def test_a_bulk_reader_that_stops_reading_is_cut_off(api: Api) -> None:
    cuts_before = log_count(api.log, *CUT_OFF)
    with _connect(api, rcvbuf=4096) as sock:
        sock.sendall(_bulk_request(api))
        sock.recv(1024)
        # the server says it ended the answer (by the pace check or the write timeout)
        wait_until(lambda: log_count(api.log, *CUT_OFF) > cuts_before, timeout=TIMEOUT * 15,
                   what="the server to cut the reader off")
        assert not _drained_whole(sock)
