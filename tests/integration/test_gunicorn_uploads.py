"""Uploads under gunicorn, whose request bodies the API reads from the socket itself.

Reading the socket directly (api/body.py) must leave gunicorn's connection exactly where
gunicorn's own reader would: later requests on a kept-alive connection, pipelined
requests, refused uploads and clients that hang up must all work as before.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import orjson
import pyarrow.parquet as pq
import pytest
import redis
import requests

from shared.keys import SCOPES, create_key
from shared.stack.embedded import EmbeddedServer
from tests.helpers.servers import running_gunicorn
from tests.helpers.waiting import log_count, wait_until

BOUNDARY = "testboundary7MA4YWxk"
#: The access line of an answered upload, whatever its status.
UPLOAD_ANSWERED = '"message":"POST /v1/recommender/data_batch '


class Api(NamedTuple):
    """The API under test: its port, an all-scope key, its data directory."""

    port: int
    key: str
    data_dir: Path


@pytest.fixture(scope="module")
def api(redis_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Api]:
    """The API under gunicorn as the Procfile runs it."""
    tmp = tmp_path_factory.mktemp("gunicorn")
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    key, _ = create_key(r, "gunicorn-uploads", list(SCOPES))
    env = {"RECSYS_DATA_DIR": str(tmp / "var"), "RECSYS_REDIS_URL": redis_server.url,
           "RECSYS_MAX_FILE_BYTES": "3000000"}
    with running_gunicorn(env, tmp / "gunicorn.log", "--workers", "1", "--threads", "4",
                          "--keep-alive", "30") as base:
        yield Api(int(base.rsplit(":", 1)[1]), key, tmp / "var")


def _csv(rows: int, start: int = 0) -> bytes:
    lines = [f"user_{i},item_{i % 97},2024-01-01T00:00:00Z,view,\"{{\"\"n\"\": {i}}}\"\n"
             for i in range(start, start + rows)]
    return ("source_id,target_id,timestamp,type,metadata\n" + "".join(lines)).encode()


def _upload(key: str, files: list[bytes], tag: str, host: str = "127.0.0.1") -> bytes:
    """A whole multipart upload request, as bytes on the wire."""
    body = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="f{n}.csv"'
        f"\r\nContent-Type: text/csv\r\n\r\n".encode() + data + b"\r\n"
        for n, data in enumerate(files)
    ) + f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="tags"\r\n\r\n{tag}\r\n'.encode()
    body += f"--{BOUNDARY}--\r\n".encode()
    head = (f"POST /v1/recommender/data_batch HTTP/1.1\r\nHost: {host}\r\napikey: {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def _get(key: str, path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\napikey: {key}\r\n\r\n").encode()


def _responses(sock: socket.socket, count: int) -> list[tuple[int, object]]:
    """Read ``count`` responses (with Content-Length bodies) from one connection."""
    reader = sock.makefile("rb")
    out: list[tuple[int, object]] = []
    for _ in range(count):
        status = int(reader.readline().split()[1])
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        out.append((status, orjson.loads(reader.read(length)) if length else None))
    return out


def _tagged(port: int, key: str, tag: str) -> list[dict[str, object]]:
    response = requests.get(f"http://127.0.0.1:{port}/v1/recommender/data_batch",
                            params={"tags": tag}, headers={"apikey": key}, timeout=30)
    assert response.status_code == 200
    batches: list[dict[str, object]] = response.json()
    return batches


def test_uploads_and_other_requests_share_a_kept_alive_connection(
    api: Api
) -> None:
    port, key, _ = api
    big = _csv(20_000)  # about 1.2 MB: many reads from the socket
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(_upload(key, [big, _csv(5)], "kept-alive"))
        [(status, body)] = _responses(sock, 1)
        assert status == 201, body
        assert [b["interaction_count"] for b in body] == [20_000, 5]  # type: ignore[union-attr]
        # refused while the file arrives (bad header): the rest of the body is read anyway
        sock.sendall(_upload(key, [b"nope,nothing\n" + b"x,y\n" * 50_000], "refused"))
        [(status, body)] = _responses(sock, 1)
        assert status == 422 and body["error"]["code"] == "unknown_header"  # type: ignore[index]
        sock.sendall(_get(key, "/v1/recommender/data_batch?tags=kept-alive"))
        [(status, body)] = _responses(sock, 1)
        assert status == 200 and len(body) == 2  # type: ignore[arg-type]
    assert _tagged(port, key, "refused") == []


def test_pipelined_requests_after_an_upload_are_answered(api: Api) -> None:
    port, key, _ = api
    # small enough for gunicorn's first read to hold the next requests too
    wire = (_upload(key, [_csv(3)], "pipelined") + _get(key, "/healthz")
            + _get(key, "/v1/recommender/data_batch?tags=pipelined"))
    assert len(wire) < 4096
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(wire)
        (up, _), (health, _), (listed, batches) = _responses(sock, 3)
    assert (up, health, listed) == (201, 200, 200)
    assert [b["interaction_count"] for b in batches] == [3]  # type: ignore[union-attr]


@pytest.mark.parametrize("reset", [False, True])
def test_a_client_that_hangs_up_mid_upload_stores_nothing(api: Api,
                                                          reset: bool) -> None:
    port, key, data_dir = api
    tag = f"hung-up-{reset}"
    wire = _upload(key, [_csv(20_000)], tag)
    gunicorn_log = data_dir.parent / "gunicorn.log"
    answered_before = log_count(gunicorn_log, UPLOAD_ANSWERED)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(wire[: len(wire) // 2])
        time.sleep(0.3)  # the server is reading the body (not a wait for a condition)
        if reset:  # close with a TCP reset rather than an orderly end
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # once the server has finished with the request (its access line), nothing is stored
    wait_until(lambda: log_count(gunicorn_log, UPLOAD_ANSWERED) > answered_before,
               timeout=60, what="the server to finish the cut-off upload")
    assert _tagged(port, key, tag) == []
    assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    # a client that went away is not a server fault (503 for the disk, or a 500)
    log = (data_dir.parent / "gunicorn.log").read_text()
    assert "Traceback" not in log and "dependency_unavailable" not in log


def test_a_body_over_the_limit_is_refused(api: Api) -> None:
    port, key, _ = api
    files = {"files": ("big.csv", _csv(60_000), "text/csv")}  # over 3 MB
    response = requests.post(f"http://127.0.0.1:{port}/v1/recommender/data_batch",
                             files=files, data={"tags": "too-big"},
                             headers={"apikey": key}, timeout=60)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert _tagged(port, key, "too-big") == []


def test_concurrent_uploads_store_exactly_their_own_rows(api: Api) -> None:
    # the uploads share the process's reused buffers: nothing may leak between them
    port, key, data_dir = api
    files = {f"together-{n}": _csv(rows, start=n * 1_000_000)
             for n, rows in enumerate([45_000, 30_000, 12_000])}  # under 3 MB each

    def send(tag: str) -> list[dict[str, object]]:
        response = requests.post(
            f"http://127.0.0.1:{port}/v1/recommender/data_batch",
            files={"files": ("f.csv", files[tag], "text/csv")}, data={"tags": tag},
            headers={"apikey": key}, timeout=120)
        assert response.status_code == 201, response.text
        batches: list[dict[str, object]] = response.json()
        return batches

    with ThreadPoolExecutor(len(files)) as pool:
        results = dict(zip(files, pool.map(send, files), strict=True))
    storage = data_dir / "storage" / "tenants" / "gunicorn-uploads" / "batches"
    for tag, data in files.items():
        [batch] = results[tag]
        stored = pq.read_table(storage / f"{batch['batch_id']}.parquet")
        sent = data.decode().splitlines()[1:]
        assert stored.num_rows == len(sent)
        assert stored.column("source_id").to_pylist() == [line.split(",")[0] for line in sent]
