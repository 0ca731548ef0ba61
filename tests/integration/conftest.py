"""Fixtures for integration tests: a real Redis-compatible server, real Celery workers,
the API served over real HTTP, all started here and stopped after (see tests/helpers/stack.py).

Most modules share ONE stack for the whole session, each under a tenant of its own (named
after the module), so none starts its own worker. Modules that restart, kill or reconfigure
what they talk to are marked ``own_stack`` and get a fresh stack on ``redis_server``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import requests

from shared.stack.embedded import EmbeddedServer, start_embedded
from tests.helpers.stack import Stack, running_stack


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """The embedded server, as ``make run`` starts it, for the whole session; modules with
    their own stack (and tests that need a bare server) flush it."""
    server = start_embedded(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for the session on an embedded server of its own, so the flushes of
    ``redis_server`` never touch it."""
    tmp = tmp_path_factory.mktemp("shared-stack")
    (tmp / "redis").mkdir()
    server = start_embedded(tmp / "redis")
    data_dir = tmp / "var"
    data_dir.mkdir()
    try:
        with running_stack(server.url, data_dir) as st:
            yield st
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """What a module's tests talk to: one real worker and the API on a real HTTP port.

    By default the session's shared stack seen as a tenant named after the module; a module
    marked ``own_stack`` gets a clean database and a stack of its own. Tests in one module
    share it: use distinct model ids or tags per test.
    """
    if request.node.get_closest_marker("own_stack") is None:
        shared: Stack = request.getfixturevalue("shared_stack")
        yield shared.for_tenant(request.module.__name__.rsplit(".", 1)[-1].replace("_", "-"))
        return
    server: EmbeddedServer = request.getfixturevalue("redis_server")
    redis.Redis.from_url(server.url, decode_responses=True).flushall()
    data_dir = tmp_path_factory.mktemp("stack") / "var"
    data_dir.mkdir()
    with running_stack(server.url, data_dir) as st:
        yield st


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A requests session for talking to the live API."""
    with requests.Session() as session:
        yield session
