"""Request counts are right under gunicorn with two worker processes (multiprocess mode)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.servers import free_port, running_gunicorn

BURST = 40


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The API under gunicorn (2 gthread workers, as the Procfile runs it), no Redis needed."""
    data_dir = tmp_path / "var"
    env = {"RECSYS_DATA_DIR": str(data_dir),
           "RECSYS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    with running_gunicorn(env, tmp_path / "gunicorn.log", "--workers", "2", "--threads", "2",
                          "--access-logfile", "-") as base:
        yield base, data_dir / "prometheus-web"


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
