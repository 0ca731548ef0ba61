"""``make run``: the whole stack in the foreground.

Starts the embedded Redis-compatible server (unless ``RECSYS_REDIS_URL`` is
set), makes sure an API key exists, then runs the Procfile with honcho (web,
worker, beat, flower). SIGINT or SIGTERM stops honcho's processes first and
the embedded server last, so nothing is left running.
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
from types import FrameType
from typing import IO

from shared.config import Settings
from shared.errors import ConfigError, ServiceError
from shared.keys import SCOPES, create_key, ensure_key, lookup
from shared.registry import connect
from shared.stack.embedded import EmbeddedServer, start_embedded

#: Plain-text copy of the key the first start created (mode 0600), so later starts and
#: the ``recsys`` CLI on this machine can use it. Remove it to stop that.
LOCAL_KEY_FILE = "local-api-key"
ROOT = Path(__file__).resolve().parents[2]


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


def _run_procfile(settings: Settings, env: dict[str, str], banner: str) -> int:
    """Run the Procfile with honcho until it ends or SIGINT/SIGTERM stops it; the exit code."""
    honcho = subprocess.Popen(
        [sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "-d", str(ROOT),
         "start"],
        env=env,
        start_new_session=True,
    )
    stop = threading.Event()

    def _forward(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        if honcho.poll() is None:
            honcho.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, _forward)
    signal.signal(signal.SIGTERM, _forward)
    threading.Thread(target=_wait_ready, args=(settings, stop, banner), daemon=True).start()
    code = honcho.wait()
    stop.set()
    _say("all processes stopped")
    return 0 if stop.is_set() else code


def main() -> int:
    """Run the stack until SIGINT/SIGTERM; returns the exit code."""
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

    server: EmbeddedServer | None = None
    base_env = dict(os.environ)
    if settings.embedded_redis:
        _say(f"starting the embedded Redis-compatible server in {settings.embedded_dir}")
        server = start_embedded(settings.embedded_dir)
        base_env["RECSYS_REDIS_URL"] = server.url
    try:
        try:
            key, key_origin = _api_key(settings)
        except ServiceError as exc:
            print(f"recsys: {exc.message}", file=sys.stderr)
            return 1
        password = settings.flower_password or secrets.token_urlsafe(12)
        env = _child_env(settings, base_env, password)
        return _run_procfile(settings, env, _banner(settings, key, key_origin, password))
    finally:
        if server is not None:
            _say("stopping the embedded Redis-compatible server")
            server.stop()
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
