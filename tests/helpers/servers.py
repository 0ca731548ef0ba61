"""Helpers for tests that start real servers: free ports, and the API under gunicorn."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import requests

from shared.stack.procs import stop_group

ROOT = Path(__file__).resolve().parents[2]


def _ports() -> range:
    """This test process's share of the ports below the kernel's ephemeral range.

    A port from ``bind(("127.0.0.1", 0))`` comes from the ephemeral range, which is also
    where every outgoing connection takes its local port: in the seconds before a server
    started by a test binds it, a connection (of this or another test process) may take it.
    Below that range nothing is handed out by the kernel, and each xdist process has its own
    slice, so two processes never pick the same port.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    low = max(low, 12000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), index + 1)
    size = (low - 10000) // count
    return range(10000 + index * size, 10000 + (index + 1) * size)


def free_port() -> int:
    """A port nothing listens on right now (connections to it are refused), outside the
    kernel's ephemeral range and distinct from other test processes' (:func:`_ports`)."""
    ports = _ports()
    for _ in range(200):
        port = random.choice(ports)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        with socket.socket() as probe:  # bound by nobody: is anybody listening?
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError(f"no free port in {ports}")


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
