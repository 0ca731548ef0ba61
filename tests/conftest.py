"""Fixtures for unit tests: settings in a temporary directory, fakeredis, the Flask test client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from shared.config import Settings
from shared.keys import SCOPES, create_key
from shared.storage import Storage, open_storage
from tests.helpers.producer import SentTasks

#: The longest modules, slowest first (seconds each on a loaded 2-core machine: 50 down to
#: 15). They run first: with ``make test``'s xdist processes, a long module handed out
#: last would end the run alone (``--no-loadscope-reorder`` keeps this order).
LONGEST_FIRST = tuple(f"tests/{name}.py" for name in (
    "integration/test_launcher_stops", "integration/test_faults",
    "integration/test_training_recovery", "integration/test_schedules_beat",
    "integration/test_flower", "integration/test_tuning", "integration/test_launcher",
    "integration/test_demo", "integration/test_locked_redis", "integration/test_slow_peers",
    "integration/test_fairness",
))  # not console/test_browser: on a fresh machine its Chromium is still installing then


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the longest modules to the front, keeping every other order as collected."""
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a private data directory and private callbacks allowed."""
    return Settings(data_dir=tmp_path / "var", callback_allow_private=True)


@pytest.fixture
def storage(settings: Settings) -> Storage:
    """The storage of ``settings``: a fresh local directory, the one the ``app`` fixture's
    API uses too (a module overriding ``settings`` picks the backend, as test_storage does)."""
    return open_storage(settings.storage_root())


@pytest.fixture
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    """An in-process Redis stand-in (no broker: kombu cannot use it)."""
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server, decode_responses=True)
    yield client
    client.flushall()


@pytest.fixture
def app(settings: Settings, fake_redis: fakeredis.FakeRedis) -> Flask:
    """The API wired to fakeredis; enqueueing needs the integration fixtures instead."""
    application = create_app(settings, redis=fake_redis)
    application.config["TESTING"] = True
    return application


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client for the API."""
    return app.test_client()


@pytest.fixture
def api_key(fake_redis: fakeredis.FakeRedis) -> str:
    """A key of tenant ``acme`` holding every scope."""
    raw, _ = create_key(fake_redis, "acme", list(SCOPES))
    return raw


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    """Headers that authenticate as tenant ``acme`` with every scope."""
    return {"apikey": api_key}


@pytest.fixture
def sent(app: Flask, monkeypatch: pytest.MonkeyPatch) -> SentTasks:
    """The app's runs service sending to a recorder instead of the broker."""
    producer = SentTasks()
    monkeypatch.setattr(app.extensions["recsys"].runs, "celery", producer)
    return producer
