"""Storing a request: all or nothing, and files left by a crashed upload are swept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest

from shared.config import Settings
from shared.data.batches import list_batches, mark_pending
from shared.errors import DependencyUnavailable
from shared.ingest.store import prepare_json, store, workspace
from shared.storage import Storage, batch_path

NOW = datetime(2024, 1, 1, tzinfo=UTC)


def _store(storage: Storage, r: Any, settings: Settings, now: datetime, **body: Any) -> Any:
    with workspace(settings) as workdir:
        prepared, _ = prepare_json(body, workdir, settings)
        return store(storage, r, "acme", prepared, ("t",), now)


def test_a_crashed_upload_leaves_nothing_visible_and_its_files_are_swept(
    storage: Storage, fake_redis: fakeredis.FakeRedis, settings: Settings
) -> None:
    # given an upload that put its file in storage and died before recording it
    orphan = "b_00000000000000000deadbeef"
    mark_pending(fake_redis, "acme", [orphan], NOW.timestamp())
    storage.put_bytes(batch_path("acme", orphan), b"PAR1")
    assert list_batches(fake_redis, "acme") == []
    # when a later upload comes, within the hour the file is left alone (it may be in flight)
    _store(storage, fake_redis, settings, NOW + timedelta(minutes=5),
           entities=[{"id": "a"}])
    assert storage.exists(batch_path("acme", orphan))
    # and after an hour it is removed
    _store(storage, fake_redis, settings, NOW + timedelta(hours=2), entities=[{"id": "b"}])
    assert not storage.exists(batch_path("acme", orphan))
    assert len(list_batches(fake_redis, "acme")) == 2
    assert fake_redis.zcard("recsys:t:acme:batches:pending") == 0


def test_failed_record_removes_files_and_marks(
    storage: Storage, fake_redis: fakeredis.FakeRedis, settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shared.ingest.store

    def down(*args: Any, **kwargs: Any) -> None:
        raise DependencyUnavailable("Redis is unreachable", details={"dependency": "redis"})

    monkeypatch.setattr(shared.ingest.store, "record_batches", down)
    with pytest.raises(DependencyUnavailable):
        _store(storage, fake_redis, settings, NOW, entities=[{"id": "a"}],
               interactions=[{"source_id": "a", "target_id": "b"}])
    assert storage.list_dir("tenants/acme/batches") == []
    assert fake_redis.zcard("recsys:t:acme:batches:pending") == 0


def test_redis_down_before_anything_is_written(storage: Storage, settings: Settings) -> None:
    server = fakeredis.FakeServer()
    server.connected = False  # every command raises a ConnectionError
    r = fakeredis.FakeRedis(server=server, decode_responses=True)
    with pytest.raises(DependencyUnavailable):
        _store(storage, r, settings, NOW, entities=[{"id": "a"}])
    assert storage.list_dir("tenants/acme/batches") == []
