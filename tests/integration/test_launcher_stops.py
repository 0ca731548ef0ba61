"""`make run` always stops: 10 start/stop cycles (SIGTERM to the process group of `make run`,
and SIGINT) and one SIGKILL leave no process, no open port and no locked data directory.

The stack runs with the minimum of processes (``RECSYS_RUN_PROCESSES=web,worker``): the
stopping path is the same for every Procfile line. On a loaded 2-core machine the
test takes about two minutes.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.stack.procs import stop_group
from tests.helpers.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
#: The contract: everything stopped within 10 s of SIGINT/SIGTERM.
STOP_SECONDS = 10.0
CYCLES = 10


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stack_pids(data_dir: Path) -> list[int]:
    """Every process (of this user) started for the stack on ``data_dir``."""
    marker = f"RECSYS_DATA_DIR={data_dir}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            found.append(int(name))
    return found


def _data_dir_free(data_dir: Path) -> bool:
    with open(data_dir / "launcher.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True


class Stack:
    """One `make run` (or the launcher directly where make is missing) in its own group."""

    def __init__(self, tmp: Path, env: dict[str, str], n: int) -> None:
        self.log = tmp / f"run-{n}.log"
        use_make = shutil.which("make") is not None
        cmd = (["make", "-s", "-o", ".venv/.installed-stamp", "run", f"PY={sys.executable}"]
               if use_make else [sys.executable, "-m", "shared.stack.launcher"])
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.proc.poll() is None, f"stack exited early:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {needle!r}:\n{self.text()[-3000:]}"
            time.sleep(0.1)


def _env(data_dir: Path, api_port: int) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "FLOWER_"))} | {
        "RECSYS_DATA_DIR": str(data_dir),
        "RECSYS_PORT": str(api_port),
        "RECSYS_FLOWER_PORT": str(free_port()),
        "RECSYS_WORKER_CONCURRENCY": "1",
        "RECSYS_WEB_WORKERS": "1",
        "RECSYS_RUN_PROCESSES": "web,worker",
        "RECSYS_LOG_FORMAT": "text",
    }


def _assert_all_gone(stack: Stack, data_dir: Path, ports: list[int], since: float,
                     limit: float) -> None:
    deadline = since + limit
    while _stack_pids(data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _stack_pids(data_dir)
    took = time.monotonic() - since
    assert not left, f"still running {took:.1f} s after the signal: {left}\n{stack.text()[-3000:]}"
    for port in ports:
        assert not _port_open(port), f"port {port} still open"
    assert _data_dir_free(data_dir)


@pytest.mark.timeout(900)
def test_ten_start_stop_cycles_and_a_sigkill_leave_nothing_running(tmp_path: Path) -> None:
    data_dir, api_port = tmp_path / "var", free_port()
    env = _env(data_dir, api_port)
    for n in range(CYCLES):
        # Given a stack starting (cycles 0 and 1: stopped while it starts; the rest once
        # the API listens, the first of them once it is ready and has printed its banner)
        stack = Stack(tmp_path, env, n)
        try:
            if n == 0:
                stack.wait_for("starting the embedded")
            elif n == 1:
                stack.wait_for("web.1")
            elif n == 2:
                stack.wait_for("Stop with Ctrl-C.")
            else:
                stack.wait_for("web.1")
                deadline = time.monotonic() + 120
                while not _port_open(api_port) and time.monotonic() < deadline:
                    time.sleep(0.1)
            port_file = data_dir / "redis" / "port"  # written once the server answers
            ports = [api_port] + ([int(port_file.read_text())] if port_file.exists() else [])
            sig = signal.SIGINT if n % 2 else signal.SIGTERM
            # When its process group gets SIGTERM (or SIGINT)
            sent = time.monotonic()
            os.killpg(stack.proc.pid, sig)
            # then everything stops within 10 s: no process, no open port, no lock
            _assert_all_gone(stack, data_dir, ports, sent, STOP_SECONDS)
            assert stack.proc.wait(timeout=5) is not None
        finally:
            stop_group(stack.proc, signal.SIGKILL, timeout=5)
    text = (tmp_path / "run-2.log").read_text()
    assert f"http://127.0.0.1:{api_port}/console" in text
    password = (data_dir / "redis" / "password").read_text().strip()
    for n in range(CYCLES):
        assert password not in (tmp_path / f"run-{n}.log").read_text(), "password printed"

    # Given a running stack, when `make run` and the launcher are killed outright
    stack = Stack(tmp_path, env, CYCLES)
    try:
        stack.wait_for("web.1")
        deadline = time.monotonic() + 120
        while not _port_open(api_port) and time.monotonic() < deadline:
            time.sleep(0.1)
        sent = time.monotonic()
        os.killpg(stack.proc.pid, signal.SIGKILL)
        # then nothing outlives them (honcho stops its processes after 5 s at most)
        _assert_all_gone(stack, data_dir, [api_port], sent, 20)
    finally:
        stop_group(stack.proc, signal.SIGKILL, timeout=5)
