"""The embedded server keeps its data across a stop and restart, and a worker resumes
consuming afterwards (the idle case; a restart during training is in the training tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import redis
from celery.result import AsyncResult

from shared.config import Settings
from shared.contracts import TASK_PROGRESS_PROBE
from shared.keys import SCOPES, create_key, lookup
from shared.queue import make_producer
from shared.stack.embedded import start_embedded
from tests.helpers.waiting import log_count, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_data_survives_restart_and_worker_resumes(tmp_path: Path) -> None:
    directory = tmp_path / "redis"
    server = start_embedded(directory)
    env = {
        **os.environ,
        "RECSYS_REDIS_URL": server.url,
        "RECSYS_DATA_DIR": str(tmp_path / "var"),
    }
    settings = Settings.from_env(env)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    raw, _ = create_key(r, "default", list(SCOPES))
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q",
         "train,callbacks", "--concurrency", "1", "--without-mingle", "--without-gossip",
         "--hostname", "restart@localhost"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    celery = make_producer(settings)
    try:
        first: AsyncResult = celery.send_task(TASK_PROGRESS_PROBE, kwargs={"steps": 1, "delay": 0})
        assert first.get(timeout=60)["done"]

        # When the server stops (persisting its data) and starts again on the same directory
        server.stop()
        # (once the worker has seen it go, so that it really has to reconnect)
        wait_until(lambda: log_count(tmp_path / "worker.log", "Connection to broker lost"),
                   timeout=60, what="the worker to notice the server is gone")
        server = start_embedded(directory)
        assert server.url == settings.redis_url, "the recorded port was not reused"

        # then the key is still there
        r = redis.Redis.from_url(server.url, decode_responses=True)
        assert lookup(r, raw) is not None
        # and the worker reconnects and runs new work
        second: AsyncResult = celery.send_task(
            TASK_PROGRESS_PROBE, kwargs={"steps": 1, "delay": 0}
        )
        assert second.get(timeout=90)["done"]
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        server.stop()
