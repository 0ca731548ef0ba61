"""Fixtures for the CLI and client tests: the fake API of tests/helpers/fake_api.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.fake_api import FakeApi, running_fake_api


@pytest.fixture(scope="module")
def fake_api_server() -> Iterator[FakeApi]:
    """One fake API server per module (a server's shutdown costs half a second)."""
    with running_fake_api() as api:
        yield api


@pytest.fixture
def fake_api(fake_api_server: FakeApi) -> FakeApi:
    """The fake API with no routes and no recorded requests."""
    fake_api_server.routes.clear()
    fake_api_server.seen.clear()
    return fake_api_server
