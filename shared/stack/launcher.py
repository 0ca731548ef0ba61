"""``make run``: the whole stack in the foreground.

Starts the embedded Redis-compatible server (unless ``RECSYS_REDIS_URL`` is
set), makes sure an API key exists, then runs the Procfile with honcho (web,
worker, beat, flower). SIGINT or SIGTERM stops everything within
:data:`STOP_SECONDS`, every time:

- the signal handler only records the signal; a wake-up pipe
  (:func:`signal.set_wakeup_fd`) ends the main loop's wait, and the main loop
  does the stopping. A handler that stopped processes itself could block on a
  lock the interrupted main thread held (seen: a hung launcher). A second
  signal (``make`` passes SIGTERM on, so it comes twice) changes nothing;
- the launcher adopts orphans (``PR_SET_CHILD_SUBREAPER``), so every process
  honcho starts stays its descendant. It sends SIGTERM to each descendant
  process group (honcho starts each Procfile line in its own session), then
  SIGKILL to whatever is left after :data:`STOP_GRACE` seconds, and stops
  the embedded server last;
- when the launcher is killed outright, honcho and the embedded server get
  SIGTERM from the kernel (``PR_SET_PDEATHSIG``), and honcho stops its
  processes as it does on Ctrl-C.

The Redis URL holds the embedded server's password: it goes to the
processes' environment, and is never printed or logged here.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO

from shared.config import Settings
from shared.errors import ConfigError, ServiceError
from shared.keys import SCOPES, create_key, ensure_key, lookup
from shared.registry import connect
from shared.stack.embedded import EmbeddedServer, die_with_parent, start_embedded
from shared.stack.procs import Signals, become_subreaper, descendants, reap, signal_groups

#: Plain-text copy of the key the first start created (mode 0600), so later starts and
#: the ``recsys`` CLI on this machine can use it. Remove it to stop that.
LOCAL_KEY_FILE = "local-api-key"
ROOT = Path(__file__).resolve().parents[2]
#: Everything is stopped this many seconds after SIGINT/SIGTERM (docs: "within 10 s").
STOP_SECONDS = 10.0
#: Seconds the Procfile's processes get after SIGTERM before SIGKILL.
STOP_GRACE = 6.0
#: Seconds the embedded server gets to write its data before SIGKILL.
SERVER_STOP_SECONDS = 2.5


def _say(message: str) -> None:
    print(f"[recsys] {message}", flush=True)


def _api_key(settings: Settings) -> tuple[str, str]:
    """The key to print: the bootstrap key, or the local one (created on first start)."""
    r = connect(settings)
    if settings.bootstrap_key:
        ensure_key(r, settings.bootstrap_key)
        return settings.bootstrap_key, "RECSYS_BOOTSTRAP_KEY"
    path = settings.data_dir / LOCAL_KEY_FILE
    if path.exists():
        raw = path.read_text().strip()
        if raw and lookup(r, raw) is not None:
            return raw, str(path)
    raw, _ = create_key(r, "default", list(SCOPES), name="local quick start")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(raw + "\n")
    return raw, f"{path} (new)"


def _wait_ready(settings: Settings, stop: threading.Event, banner: str) -> None:
    url = f"http://{settings.host}:{settings.port}/readyz"
    started = time.monotonic()
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    _say(f"ready after {time.monotonic() - started:.1f} s")
                    print(banner, flush=True)
                    return
        except OSError:
            pass
        stop.wait(0.5)


def _lock_data_dir(settings: Settings) -> IO[str] | None:
    """An exclusive lock on the data directory, held while the file stays open; None if taken."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(settings.data_dir / "launcher.lock", "w")  # noqa: SIM115 - held for the run
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return None
    return lock


def _child_env(settings: Settings, base: dict[str, str], password: str) -> dict[str, str]:
    """The environment of the Procfile's processes: ``base`` plus the settings they read."""
    env = dict(base)
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        {
            "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
            "RECSYS_HOST": settings.host,
            "RECSYS_PORT": str(settings.port),
            "RECSYS_FLOWER_PORT": str(settings.flower_port),
            "RECSYS_DATA_DIR": str(settings.data_dir),
            "RECSYS_WORKER_CONCURRENCY": str(settings.worker_concurrency),
            "RECSYS_WEB_WORKERS": str(settings.web_workers),
            "RECSYS_WEB_THREADS": str(settings.web_threads),
            "RECSYS_WEB_TIMEOUT": str(settings.web_timeout),
            "FLOWER_BASIC_AUTH": f"{settings.flower_user}:{password}",
            "FLOWER_UNAUTHENTICATED_API": "false",
            "PYTHONUNBUFFERED": "1",
            # shared/stack/supervise.py stops its command when this process is gone
            "RECSYS_LAUNCHER_PID": str(os.getpid()),
        }
    )
    return env


def _banner(settings: Settings, key: str, key_origin: str, password: str) -> str:
    """What to print once the API answers: where everything is and how to log in."""
    base = f"http://{settings.host}:{settings.port}"
    return "\n".join(
        [
            "",
            "  Recommender service is up.",
            f"    API:      {base}/v1/recommender",
            f"    Console:  {base}/console",
            f"    Docs:     {base}/docs  (OpenAPI: {base}/openapi.json)",
            f"    Flower:   http://{settings.host}:{settings.flower_port}"
            f"  (login {settings.flower_user} / {password})",
            f"    API key:  {key}   (from {key_origin})",
            f"    Data:     {settings.data_dir}",
            "",
            f"  Try: curl -H 'apikey: {key}' {base}/v1/recommender/data_batch",
            "  Stop with Ctrl-C.",
            "",
        ]
    )


def _start_honcho(settings: Settings, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """honcho running the Procfile (or the chosen processes of it), tethered to us."""
    return subprocess.Popen(
        [sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "-d", str(ROOT),
         "start", *settings.run_processes],
        env=env,
        start_new_session=True,  # a terminal's Ctrl-C reaches us only; we stop the rest
        preexec_fn=die_with_parent(),
    )


def _stop_processes(signals: Signals, keep: set[int]) -> None:
    """SIGTERM every descendant process group but ``keep``'s; SIGKILL what outlives the grace."""
    me, own_group = os.getpid(), os.getpgrp()
    deadline = time.monotonic() + STOP_GRACE
    termed: set[int] = set()
    while True:
        procs = [p for p in descendants(me) if p.pid not in keep and p.pgid not in keep]
        reap({p.pid for p in procs if p.zombie and p.ppid == me})
        alive = [p for p in procs if not p.zombie]
        if not alive:
            return
        groups = {p.pgid for p in alive} - {own_group}
        if time.monotonic() >= deadline:
            _say(f"sending SIGKILL to {len(alive)} process(es) still running")
            signal_groups(groups, signal.SIGKILL)
            for p in alive:  # a child that joined our own group
                if p.pgid == own_group:
                    os.kill(p.pid, signal.SIGKILL)
            deadline = float("inf")
        elif groups - termed:
            signal_groups(groups - termed, signal.SIGTERM)
            termed |= groups
        signals.wait(0.1)


def _run_procfile(settings: Settings, env: dict[str, str], banner: str,
                  signals: Signals) -> tuple[subprocess.Popen[bytes], int]:
    """Run honcho until it ends or a signal comes; (honcho, exit code)."""
    honcho = _start_honcho(settings, env)
    stop = threading.Event()
    threading.Thread(target=_wait_ready, args=(settings, stop, banner), daemon=True).start()
    while honcho.poll() is None and not signals.wait(0.2):
        pass
    stop.set()
    return honcho, 0 if signals.received is not None else int(honcho.returncode or 0)


def main() -> int:
    """Run the stack until SIGINT/SIGTERM; returns the exit code."""
    signals = Signals()  # first: from here on a signal only sets a flag
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"recsys: {exc.message}", file=sys.stderr)
        return 2
    lock = _lock_data_dir(settings)
    if lock is None:
        print(
            f"recsys: another stack is already running on {settings.data_dir}; "
            "stop it first or set RECSYS_DATA_DIR to another directory.",
            file=sys.stderr,
        )
        return 1
    become_subreaper()
    server: EmbeddedServer | None = None
    started = False
    try:
        base_env = dict(os.environ)
        if settings.embedded_redis:
            _say(f"starting the embedded Redis-compatible server in {settings.embedded_dir}")
            server = start_embedded(settings.embedded_dir, maxmemory=settings.redis_maxmemory,
                                    tethered=True)
            base_env["RECSYS_REDIS_URL"] = server.url  # the children's only copy: never print
        if signals.received is not None:
            return 0
        try:
            key, key_origin = _api_key(settings)
        except ServiceError as exc:
            print(f"recsys: {exc.message}", file=sys.stderr)
            return 1
        if signals.received is not None:
            return 0
        password = settings.flower_password or secrets.token_urlsafe(12)
        env = _child_env(settings, base_env, password)
        started = True
        _, code = _run_procfile(settings, env, _banner(settings, key, key_origin, password),
                                signals)
        return code
    finally:
        if signals.received is not None:
            _say(f"{signal.Signals(signals.received).name} received; stopping everything")
        keep = {server.process.pid} if server is not None else set()
        _stop_processes(signals, keep)
        if started:
            _say("all processes stopped")
        if server is not None:
            _say("stopping the embedded Redis-compatible server")
            server.stop(timeout=SERVER_STOP_SECONDS)
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
