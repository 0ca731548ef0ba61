"""Per-request cost of the operations layer: rate limiting, metrics and the access log.

Runs the API in-process (Flask test client, no HTTP) against the embedded
Redis-compatible server and times an authenticated GET of
``/v1/recommender/webhook_secret`` with rate limits on and off, then times a
``/metrics`` scrape. Prints the figures. Usage: ``.venv/bin/python bench/ops_overhead.py``.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from pathlib import Path

from api.app import create_app
from shared.config import Settings
from shared.keys import SCOPES, create_key
from shared.registry import connect
from shared.stack.embedded import start_embedded

REQUESTS = 2000
ROUNDS = 3


def _per_request_us(settings: Settings, raw_key: str) -> float:
    app = create_app(settings)
    logging.getLogger().setLevel(logging.WARNING)  # time the work, not the terminal
    client = app.test_client()
    headers = {"apikey": raw_key}
    client.get("/v1/recommender/webhook_secret", headers=headers)  # warm up
    best = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(REQUESTS):
            response = client.get("/v1/recommender/webhook_secret", headers=headers)
            assert response.status_code == 200, response.status_code
        best.append((time.perf_counter() - started) / REQUESTS * 1e6)
    return min(best)


def main() -> None:
    """Print the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        server = start_embedded(Path(tmp) / "redis")
        try:
            base = Settings.from_env(
                {"RECSYS_REDIS_URL": server.url, "RECSYS_DATA_DIR": str(Path(tmp) / "var")}
            )
            raw, _ = create_key(connect(base), "bench", list(SCOPES))
            off = Settings(**{**base.__dict__, "rate_limit": "off", "rate_limit_recommend": "off"})
            on = Settings(**{**base.__dict__, "rate_limit": "1000000 per minute"})
            t_off = _per_request_us(off, raw)
            t_on = _per_request_us(on, raw)

            app = create_app(on)
            client = app.test_client()
            scrapes = []
            for _ in range(50):
                started = time.perf_counter()
                assert client.get("/metrics").status_code == 200
                scrapes.append((time.perf_counter() - started) * 1e3)
        finally:
            server.stop()
    runs = f"best of {ROUNDS}x{REQUESTS}"
    print(f"authenticated GET, rate limits off : {t_off:8.0f} us/request ({runs})")
    print(f"authenticated GET, rate limits on  : {t_on:8.0f} us/request")
    print(f"rate limiting adds                 : {t_on - t_off:8.0f} us/request")
    print(f"/metrics scrape (median of 50)     : {statistics.median(scrapes):8.2f} ms")


if __name__ == "__main__":
    main()
