"""What integration tests talk to: a real Redis-compatible server, real Celery workers and
the API served over real HTTP (``running_stack``), and the ``Stack`` handle on them.

The fixtures that start these live in ``tests/integration/conftest.py``."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import redis
from werkzeug.serving import BaseWSGIServer, make_server

from api.app import create_app
from shared.config import Settings
from shared.keys import SCOPES, create_key
from shared.stack.procs import stop_group

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    """What an integration test talks to."""

    settings: Settings
    env: dict[str, str]
    redis: redis.Redis
    data_dir: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    api_url: str = ""
    api_key: str = ""
    tenant: str = "default"

    def headers(self, key: str | None = None) -> dict[str, str]:
        """Headers authenticating with ``key`` (the all-scope key of ``tenant`` by default)."""
        return {"apikey": key or self.api_key}

    def for_tenant(self, tenant: str) -> Stack:
        """The same servers and workers, seen as ``tenant`` (a new all-scope key of its own)."""
        raw, _ = create_key(self.redis, tenant, list(SCOPES))
        return dataclasses.replace(self, tenant=tenant, api_key=raw)

    def url(self, path: str) -> str:
        """Absolute URL of an API path under /v1/recommender (or a root path like /readyz)."""
        if path.startswith("/v1/") or path in {"/healthz", "/readyz", "/metrics", "/openapi.json"}:
            return self.api_url + path
        return f"{self.api_url}/v1/recommender{path}"

    def start_worker(
        self, queues: str = "train,callbacks", concurrency: int = 2, name: str | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a real prefork Celery worker, supervised as the Procfile runs it, and wait
        until it answers a ping."""
        node = name or f"w{len(self.workers)}-{os.getpid()}@localhost"
        log = open(self.data_dir / f"{node.split('@')[0]}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.stack.supervise", "--",
             sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
             "-Q", queues, "-E", "--concurrency", str(concurrency), "--prefetch-multiplier",
             "1", "--hostname", node, "--loglevel", "INFO", "--without-mingle",
             "--without-gossip"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.workers.append(proc)
        from shared.queue import make_producer

        celery = make_producer(self.settings)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}; see {log.name}")
            if celery.control.ping(destination=[node], timeout=0.5):
                return proc
        raise RuntimeError("worker did not answer a ping within 60 s")

    def stop_worker(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        """Stop a worker (its whole process group) with ``sig`` and wait for it."""
        stop_group(proc, sig, timeout=60)
        if proc in self.workers:
            self.workers.remove(proc)


def _serve(app_settings: Settings) -> tuple[BaseWSGIServer, threading.Thread]:
    app = create_app(app_settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


S = TypeVar("S", bound=Stack)


@contextmanager
def running_stack(redis_url: str, data_dir: Path, cls: type[S] = Stack) -> Iterator[S]:  # type: ignore[assignment]
    """Settings for tests (fast heartbeats, private callbacks allowed), an all-scope key,
    the API over HTTP and one supervised worker, against the server at ``redis_url``."""
    env = {
        **os.environ,
        "RECSYS_REDIS_URL": redis_url,
        "RECSYS_DATA_DIR": str(data_dir),
        "RECSYS_CALLBACK_ALLOW_PRIVATE": "true",
        "RECSYS_TRAIN_THREADS": "2",
        "RECSYS_HEARTBEAT_INTERVAL": "1",
        "RECSYS_HEARTBEAT_STALE_AFTER": "6",
        "RECSYS_RECONCILE_INTERVAL": "2",
        # Explicit, above what polling loops send: a stack serves many tests in a row.
        "RECSYS_RATE_LIMIT": "60000 per minute",
        "PYTHONUNBUFFERED": "1",
    }
    settings = Settings.from_env(env)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    raw, _ = create_key(r, "default", list(SCOPES))
    st = cls(settings=settings, env=env, redis=r, data_dir=data_dir, api_key=raw)
    server, _thread = _serve(settings)
    st.api_url = f"http://127.0.0.1:{server.server_port}"
    try:
        st.start_worker()
        yield st
    finally:
        server.shutdown()
        for proc in list(st.workers):
            st.stop_worker(proc, signal.SIGKILL)
