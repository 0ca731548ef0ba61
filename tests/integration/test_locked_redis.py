"""The embedded server is locked: a password per data directory, in a 0600 file that every
process of the stack (and the CLI) reads; clients without it are refused."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.client.cli.main import cli
from shared.config import Settings
from shared.registry import connect
from shared.stack import embedded
from shared.stack.embedded import EmbeddedServer, start_embedded


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    started = start_embedded(Settings(data_dir=tmp_path / "var").embedded_dir)
    yield started
    started.stop()


def test_a_client_without_the_password_is_refused(server: EmbeddedServer) -> None:
    # Given the embedded server, when a local user connects without the password
    # (without retries: redis-py retries an AuthenticationError, a ConnectionError, with
    # backoff for about 7 s before raising it)
    once = Retry(NoBackoff(), 0)
    anonymous = redis.Redis(host="127.0.0.1", port=server.port, retry=once)
    # then every command is refused
    with pytest.raises(redis.AuthenticationError):
        anonymous.keys("*")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=server.port, password="guess", retry=once).ping()


def test_a_wrong_password_in_the_settings_fails_at_once(server: EmbeddedServer) -> None:
    # A process given a wrong password hears of it at once, not after redis-py's
    # retries (which still apply to a server that is down or slow).
    wrong = Settings(redis_url=f"redis://:guess@127.0.0.1:{server.port}/0")
    started = time.monotonic()
    with pytest.raises(redis.AuthenticationError):
        connect(wrong).ping()
    assert time.monotonic() - started < 2.0


def test_the_password_is_private_and_every_process_finds_it(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    # the password and the config holding it are readable by their owner only
    for name in ("password", "valkey.conf"):
        mode = stat.S_IMODE((server.directory / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"
    assert stat.S_IMODE(server.directory.stat().st_mode) == 0o700
    # a process given only the data directory connects (API, workers, the CLI)
    settings = Settings(data_dir=tmp_path / "var")
    assert connect(settings).ping()
    result = CliRunner().invoke(cli, ["keys", "list"],
                                env={"RECSYS_DATA_DIR": str(tmp_path / "var")})
    assert result.exit_code == 0, result.output
    # and the server's own description never shows it
    assert (server.directory / "password").read_text().strip() not in repr(server)


def test_a_restart_keeps_the_password(server: EmbeddedServer) -> None:
    first = server.password
    server.stop()
    again = start_embedded(server.directory)
    try:
        assert again.password == first and redis.Redis.from_url(again.url).ping()
    finally:
        again.stop()


def test_a_port_taken_before_the_server_binds_it_is_replaced(
    server: EmbeddedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a free port that another process takes before the new server binds it
    # (here: the running server's), the start picks another port and succeeds.
    offered = iter([server.port])
    real = embedded._free_port
    monkeypatch.setattr(embedded, "_free_port", lambda: next(offered, None) or real())
    other = start_embedded(tmp_path / "other")
    try:
        assert other.port != server.port and redis.Redis.from_url(other.url).ping()
        assert (tmp_path / "other" / "port").read_text().strip() == str(other.port)
    finally:
        other.stop()
    # A port the caller insists on is not replaced: a clear error instead.
    with pytest.raises(RuntimeError, match=f"Port {server.port} is taken"):
        start_embedded(tmp_path / "third", port=server.port)
