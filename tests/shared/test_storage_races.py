"""Storage races: an upload whose MULTI reply times out, and DELETE /models racing POST /train."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

import shared.runs.lifecycle as lifecycle
from shared.config import Settings
from shared.data.batches import list_batches
from shared.errors import Conflict, DependencyUnavailable
from shared.ingest.store import prepare_json, store, workspace
from shared.runs.lifecycle import active_runs, create_run, delete_model
from shared.runs.records import get_model, get_status, run_key, run_member
from shared.storage import Storage, batch_path

NOW = datetime(2024, 1, 1, tzinfo=UTC)
BODY: dict[str, Any] = {"entities": [{"id": "a"}],
                        "interactions": [{"source_id": "a", "target_id": "b"}]}


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(str(tmp_path / "storage"))


def _lose_multi_reply(monkeypatch: pytest.MonkeyPatch, *, commit: bool) -> None:
    """Make the upload's MULTI (the one recording batch hashes) time out, after running it
    when ``commit``; other transactions (the byte counter's start) run as usual."""
    original = fakeredis.FakeRedis.pipeline

    def pipeline(self: Any, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = original(self, transaction, shard_hint)
        if transaction:
            real_execute = pipe.execute

            def execute(raise_on_error: bool = True) -> Any:
                names = [str(args[0]).upper() for args, _ in pipe.command_stack]
                if "HSET" not in names:  # not the upload's record: answer normally
                    return real_execute(raise_on_error)
                if commit:
                    real_execute(raise_on_error)
                else:
                    pipe.reset()
                raise redis.TimeoutError("Timeout reading from socket")

            pipe.execute = execute
        return pipe

    monkeypatch.setattr(fakeredis.FakeRedis, "pipeline", pipeline)


def _store(storage: Storage, r: Any, settings: Settings) -> Any:
    with workspace(settings) as workdir:
        prepared, _ = prepare_json(BODY, workdir, settings)
        return store(storage, r, "acme", prepared, ("t",), NOW)


def test_an_upload_committed_before_its_reply_timed_out_keeps_its_files(
    storage: Storage, fake_redis: fakeredis.FakeRedis, settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given Redis runs the upload's MULTI but its reply times out
    _lose_multi_reply(monkeypatch, commit=True)
    # when the upload is stored
    metas = _store(storage, fake_redis, settings)
    # then it succeeds: its batches are listed and every one of them has its file
    listed = list_batches(fake_redis, "acme")
    assert [m.batch_id for m in listed] == [m.batch_id for m in metas] and len(listed) == 2
    for meta in listed:
        assert storage.exists(batch_path("acme", meta.batch_id))
    assert fake_redis.zcard("recsys:t:acme:batches:pending") == 0


def test_an_upload_not_committed_before_its_reply_timed_out_leaves_nothing(
    storage: Storage, fake_redis: fakeredis.FakeRedis, settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given the upload's MULTI times out without running
    _lose_multi_reply(monkeypatch, commit=False)
    # when the upload is stored, it fails with a 503
    with pytest.raises(DependencyUnavailable):
        _store(storage, fake_redis, settings)
    # then nothing is listed and no file or pending mark is left
    assert list_batches(fake_redis, "acme") == []
    assert storage.list_dir("tenants/acme/batches") == []
    assert fake_redis.zcard("recsys:t:acme:batches:pending") == 0


def test_a_run_created_while_its_model_is_deleted_is_never_orphaned(
    fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a model whose only run ended, so nothing trains
    create_run(fake_redis, "acme", "shop", {}, None)
    fake_redis.hset(run_key("acme", "shop", 1), "status", "error")
    other = fakeredis.FakeRedis(server=fake_redis.connection_pool.connection_kwargs["server"],
                                decode_responses=True)
    real_check = lifecycle.check_not_active
    raced: list[int] = []

    def check_then_train(r: Any, tenant: str, model_id: str) -> None:
        real_check(r, tenant, model_id)
        if not raced:  # POST /train lands between DELETE's check and its removal
            raced.append(0)
            raced[0] = create_run(other, tenant, model_id, {}, None)["version"]

    monkeypatch.setattr(lifecycle, "check_not_active", check_then_train)
    # when the model is deleted, it answers 409: the new run is training
    with pytest.raises(Conflict):
        delete_model(fake_redis, "acme", "shop")
    # then the new run is intact: listed, active, with its record
    assert raced == [2]
    assert get_model(fake_redis, "acme", "shop") is not None
    assert get_status(fake_redis, "acme", "shop", 2)["status"] == "running"
    assert run_member("acme", "shop", 2) in active_runs(fake_redis)
