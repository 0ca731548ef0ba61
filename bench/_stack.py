"""The stack a benchmark runs against: an embedded server, the API in a thread, one worker.

Shared by ``bench/train.py`` and ``bench/tune.py`` (benchmarks import nothing from
``tests/``; tests may import from here).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.config import Settings  # noqa: E402
from shared.keys import SCOPES, create_key  # noqa: E402
from shared.registry import connect  # noqa: E402
from shared.stack.embedded import start_embedded  # noqa: E402

TENANT = "default"


class Stack:
    """Embedded server, API thread and one worker (``processes`` pool processes) in ``base``."""

    def __init__(self, base: Path, threads: int, processes: int = 1) -> None:
        self.server = start_embedded(base / "redis")
        self.env = {**os.environ, "RECSYS_REDIS_URL": self.server.url,
                    "RECSYS_DATA_DIR": str(base / "var"), "RECSYS_TRAIN_THREADS": str(threads),
                    "RECSYS_MAX_JSON_BODY_BYTES": str(256 << 20), "PYTHONUNBUFFERED": "1",
                    "RECSYS_LOG_LEVEL": "WARNING",
                    "RECSYS_RATE_LIMIT": "100000 per minute"}
        self.settings = Settings.from_env(self.env)
        self.redis = connect(self.settings)
        self.key, _ = create_key(self.redis, TENANT, list(SCOPES))
        from werkzeug.serving import make_server

        from api.app import create_app

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.http = make_server("127.0.0.1", 0, create_app(self.settings), threaded=True)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_port}/v1/recommender"
        log = open(base / "worker.log", "ab")  # noqa: SIM115 - handed to the child
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q",
             "train,callbacks", "--concurrency", str(processes), "--prefetch-multiplier", "1",
             "--hostname", f"bench-{os.getpid()}@localhost", "--loglevel", "WARNING",
             "--without-mingle", "--without-gossip"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        from shared.queue import make_producer

        celery = make_producer(self.settings)
        deadline = time.monotonic() + 60
        while not celery.control.ping(timeout=0.5):
            if time.monotonic() > deadline or self.worker.poll() is not None:
                raise SystemExit("the worker did not start; see worker.log")

    def headers(self) -> dict[str, str]:
        """The all-scope key's header."""
        return {"apikey": self.key}

    def close(self) -> None:
        """Stop the worker, the API and the server."""
        os.killpg(self.worker.pid, signal.SIGTERM)
        self.worker.wait(timeout=60)
        self.http.shutdown()
        self.server.stop()
