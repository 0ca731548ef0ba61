"""Request counts are right under gunicorn with two worker processes (multiprocess mode)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shared.procs import stop_group

ROOT = Path(__file__).resolve().parents[2]
BURST = 40


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The API under gunicorn (2 gthread workers, as the Procfile runs it), no Redis needed."""
    port = _free_port()
    data_dir = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(
        RECSYS_DATA_DIR=str(data_dir),
        RECSYS_REDIS_URL=f"redis://127.0.0.1:{_free_port()}/0",
        PYTHONUNBUFFERED="1",
    )
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_conf",
         "--bind", f"127.0.0.1:{port}", "--workers", "2", "--worker-class", "gthread",
         "--threads", "2", "--no-control-socket", "--access-logfile", "-",
         "api.app:create_app()"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {(tmp_path / 'gunicorn.log').read_text()}")
            try:
                requests.get(base + "/healthz", timeout=10)
                break
            except (requests.ConnectionError, requests.Timeout):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield base, data_dir / "prometheus-web"
    finally:
        stop_group(proc)
        log.close()


def _unmatched_count(base: str) -> float:
    response = requests.get(base + "/metrics", headers={"Connection": "close"}, timeout=10)
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if (
                sample.name == "recsys_http_requests_total"
                and sample.labels.get("endpoint") == "unmatched"
                and sample.labels.get("status") == "404"
            ):
                return sample.value
    return 0.0


def test_every_scrape_counts_the_requests_of_both_workers(
    gunicorn: tuple[str, Path],
) -> None:
    base, metrics_dir = gunicorn

    def hit(i: int) -> int:
        response = requests.get(
            f"{base}/not-a-route/{i}", headers={"Connection": "close"}, timeout=10
        )
        return response.status_code

    # Given requests spread over both worker processes (bursts until both have served some)
    sent = 0
    pids: set[str] = set()
    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(max_workers=8) as pool:
        while len(pids) < 2 and time.monotonic() < deadline:
            statuses = list(pool.map(hit, range(sent, sent + BURST)))
            assert statuses == [404] * BURST
            sent += BURST
            pids = {p.stem.rsplit("_", 1)[-1] for p in metrics_dir.glob("counter_*.db")}
    assert len(pids) == 2, f"both workers should have served requests: {pids}"

    # Then every scrape, whichever worker answers it, counts all of them
    counts = {_unmatched_count(base) for _ in range(8)}
    assert counts == {float(sent)}


def test_gunicorn_and_app_lines_are_structured(gunicorn: tuple[str, Path]) -> None:
    base, metrics_dir = gunicorn
    requests.get(f"{base}/healthz", headers={"X-Request-Id": "gunicorn-1"}, timeout=10)
    log_file = metrics_dir.parents[1] / "gunicorn.log"
    deadline = time.monotonic() + 10
    while "gunicorn-1" not in log_file.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [line for line in log_file.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is JSON
    assert any(p["logger"] == "gunicorn.error" and "Booting worker" in p["message"]
               for p in parsed)
    access = [p for p in parsed if p.get("request_id") == "gunicorn-1"]
    assert [p["logger"] for p in access] == ["recsys.access"], "one access line, ours"
