"""`make run`'s launcher, as a new user runs it: starts everything, prints what to use,
stops everything on SIGTERM/SIGINT, and finds its data again on the next start."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from shared.stack.procs import stop_group
from tests.helpers.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.stack.launcher"],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )
    out.close()
    return proc


def _wait_banner(proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "Stop with Ctrl-C." in text:
            return text
        assert proc.poll() is None, f"launcher exited early:\n{text[-3000:]}"
        time.sleep(0.3)
    raise AssertionError(f"no banner within {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    stop_group(proc, sig, timeout=60)  # a SIGKILL fallback shows as a non-zero exit code


def test_run_starts_everything_and_stops_everything(tmp_path: Path) -> None:
    api_port, flower_port = free_port(), free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "FLOWER_"))
    } | {
        "RECSYS_DATA_DIR": str(tmp_path / "var"),
        "RECSYS_PORT": str(api_port),
        "RECSYS_FLOWER_PORT": str(flower_port),
        "RECSYS_WORKER_CONCURRENCY": "1",
        "RECSYS_WEB_WORKERS": "1",
    }
    base = f"http://127.0.0.1:{api_port}"

    # Given a fresh data directory, when the stack starts
    proc = _start(env, tmp_path / "first.log")
    try:
        banner = _wait_banner(proc, tmp_path / "first.log")
        # then it prints where everything is, with a login and a key
        assert f"{base}/v1/recommender" in banner and f"{base}/docs" in banner
        flower = re.search(r"Flower:\s+(\S+)\s+\(login (\S+) / (\S+)\)", banner)
        assert flower, banner
        key = re.search(r"API key:\s+(rk_\S+)", banner)
        assert key and "(new)" in banner
        # and it is ready, Flower wants a login, the API wants a key
        assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
        assert requests.get(flower.group(1), timeout=10).status_code == 401
        assert (
            requests.get(flower.group(1), auth=(flower.group(2), flower.group(3)), timeout=10)
            .status_code
            == 200
        )
        no_key = requests.get(f"{base}/v1/recommender/data_batch", timeout=10)
        assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "missing_api_key"
        redis_port = int((tmp_path / "var" / "redis" / "port").read_text())
    finally:
        # when it gets SIGTERM
        _stop(proc, signal.SIGTERM)
    # then nothing is left listening: API, Flower, the embedded server
    assert proc.returncode == 0
    for port in (api_port, flower_port, redis_port):
        assert not _port_open(port), f"port {port} still open after stop"

    # Given the same data directory, when it starts again
    proc = _start(env, tmp_path / "second.log")
    try:
        banner = _wait_banner(proc, tmp_path / "second.log")
        # then it finds its data: the same key, still valid
        again = re.search(r"API key:\s+(rk_\S+)", banner)
        assert again and again.group(1) == key.group(1) and "(new)" not in banner
        with_key = requests.get(
            f"{base}/v1/recommender/data_batch", headers={"apikey": key.group(1)}, timeout=10
        )
        assert with_key.status_code != 401
    finally:
        # and Ctrl-C (SIGINT to the process group) stops it too
        _stop(proc, signal.SIGINT)
    for port in (api_port, flower_port, redis_port):
        assert not _port_open(port), f"port {port} still open after Ctrl-C"
