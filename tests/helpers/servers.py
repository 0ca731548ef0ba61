"""Helpers for tests that start real servers: free ports, and the API under gunicorn."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import requests

from shared.stack.procs import stop_group

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port nothing listens on right now (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_gunicorn(env: Mapping[str, str], log_path: Path, *args: str) -> Iterator[str]:
    """The API under gunicorn with the Procfile's config file (plus ``args``); its base URL.

    ``env`` is added to this process's environment (without PROMETHEUS_MULTIPROC_DIR, so
    the server makes its own); gunicorn's output goes to ``log_path``.
    """
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    full_env.update(env, PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_conf",
             "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread",
             "--no-control-socket", *args, "api.app:create_app()"],
            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"gunicorn exited: {log_path.read_text()}")
                try:
                    requests.get(base + "/healthz", timeout=10)
                    break
                except (requests.ConnectionError, requests.Timeout):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            yield base
        finally:
            stop_group(proc)
