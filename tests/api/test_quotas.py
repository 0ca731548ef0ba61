"""Per-tenant quotas and request size caps through the Flask test client (issue #19)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from shared import quotas
from shared.config import Settings
from shared.data.batches import list_batches
from shared.errors import QuotaExceeded
from shared.keys import SCOPES, create_key
from shared.runs.ending import finish_run
from shared.runs.lifecycle import create_run
from shared.runs.ref import RunRef

P = "/v1/recommender"



def _app(tmp_path: Path, r: fakeredis.FakeRedis, **limits: Any) -> Flask:
    settings = Settings(data_dir=tmp_path / "var", callback_allow_private=True, **limits)
    app = create_app(settings, redis=r)
    app.config["TESTING"] = True
    return app


def _quota_error(response: Any, quota: str, limit: int, used: int) -> None:
    assert response.status_code == 429, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "quota_exceeded"
    assert error["details"] == {"quota": quota, "limit": limit, "used": used}


def test_active_runs_quota_refuses_the_next_run_and_stores_nothing(
    tmp_path: Path, fake_redis: fakeredis.FakeRedis, auth: dict[str, str],
    enqueued: list[RunRef],
) -> None:
    client = _app(tmp_path, fake_redis, quota_active_runs=2).test_client()
    for name in ("a", "b"):
        assert client.post(f"{P}/train", json={"model_id": name}, headers=auth).status_code == 202
    refused = client.post(f"{P}/train", json={"model_id": "c"}, headers=auth)
    _quota_error(refused, "active_runs", 2, 2)
    assert len(enqueued) == 2
    assert client.get(f"{P}/models/c", headers=auth).status_code == 404
    assert [m["model_id"] for m in client.get(f"{P}/models", headers=auth).get_json()] == \
        ["a", "b"]
    # when one run ends, its place is free again
    finish_run(fake_redis, None, RunRef("acme", "a", 1), phase="cancelled", message="x")
    assert client.post(f"{P}/train", json={"model_id": "c"}, headers=auth).status_code == 202


def test_the_quota_is_per_tenant(
    tmp_path: Path, fake_redis: fakeredis.FakeRedis, auth: dict[str, str],
    enqueued: list[RunRef],
) -> None:
    client = _app(tmp_path, fake_redis, quota_active_runs=1).test_client()
    other, _ = create_key(fake_redis, "other", list(SCOPES))
    assert client.post(f"{P}/train", json={"model_id": "a"}, headers=auth).status_code == 202
    assert client.post(f"{P}/train", json={"model_id": "a"},
                       headers={"apikey": other}).status_code == 202


def test_models_quota_counts_models_not_versions(
    tmp_path: Path, fake_redis: fakeredis.FakeRedis, auth: dict[str, str],
    enqueued: list[RunRef],
) -> None:
    client = _app(tmp_path, fake_redis, quota_models=1).test_client()
    assert client.post(f"{P}/train", json={"model_id": "a"}, headers=auth).status_code == 202
    _quota_error(client.post(f"{P}/train", json={"model_id": "b"}, headers=auth),
                 "models", 1, 1)
    finish_run(fake_redis, None, RunRef("acme", "a", 1), phase="cancelled", message="x")
    # a new version of a model it already has is no new model
    assert client.post(f"{P}/train", json={"model_id": "a"}, headers=auth).status_code == 202


def test_concurrent_run_creation_never_overshoots(fake_redis: fakeredis.FakeRedis) -> None:
    settings = Settings(quota_active_runs=3)
    outcomes: list[str] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        try:
            create_run(fake_redis, "acme", f"m{i}", {}, None, settings=settings)
            result = "ok"
        except QuotaExceeded:
            result = "refused"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 3 and outcomes.count("refused") == 9
    assert fake_redis.scard(quotas.active_runs_key("acme")) == 3


def test_batches_quota_refuses_an_upload_and_keeps_no_file(
    tmp_path: Path, fake_redis: fakeredis.FakeRedis, auth: dict[str, str],
) -> None:
    client = _app(tmp_path, fake_redis, quota_batches=2).test_client()
    row = {"id": "i1", "type": "item"}
    assert client.post(f"{P}/data_batch", json={"entities": [row]},
                       headers=auth).status_code == 201
    # two lists make two batches: one over the quota, so neither is stored
    body = {"entities": [row], "interactions": [
        {"type": "view", "source_id": "u", "target_id": "i1",
         "timestamp": "2026-01-01T00:00:00Z"}]}
    _quota_error(client.post(f"{P}/data_batch", json=body, headers=auth), "batches", 2, 1)
    assert len(list_batches(fake_redis, "acme")) == 1
    stored = list((tmp_path / "var" / "storage").rglob("*.parquet"))
    assert len(stored) == 1


def test_storage_bytes_quota_and_delete_frees_it(
    tmp_path: Path, fake_redis: fakeredis.FakeRedis, auth: dict[str, str],
) -> None:
    client = _app(tmp_path, fake_redis, quota_storage_bytes=1000).test_client()
    first = client.post(f"{P}/data_batch", json={"entities": [{"id": "i1", "type": "item"}],
                                                  "tags": ["one"]}, headers=auth)
    assert first.status_code == 201
    used = first.get_json()[0]["bytes"]
    assert int(fake_redis.get(quotas.batch_bytes_key("acme"))) == used
    assert used < 1000 < used * 2, "the test needs a second batch to go past the limit"
    _quota_error(client.post(f"{P}/data_batch", json={"entities": [{"id": "i2",
                 "type": "item"}]}, headers=auth), "storage_bytes", 1000, used)
    assert client.delete(f"{P}/data_batch?tags=one", headers=auth).status_code == 200
    assert int(fake_redis.get(quotas.batch_bytes_key("acme"))) == 0
    assert client.post(f"{P}/data_batch", json={"entities": [{"id": "i2", "type": "item"}]},
                       headers=auth).status_code == 201


@pytest.mark.parametrize("body, field", [
    ({"data_filters": {"entities": [{"field": "metadata.x", "op": "eq",
                                     "value": "v" * 5000}]}}, "data_filters.entities[0]"),
    ({"data_filters": {"entities": [{"field": "metadata." + "k" * 300, "op": "exists"}]}},
     "data_filters.entities[0]"),
    ({"data_tags": ["t" * 200]}, "data_tags"),
    ({"data_tags": [f"t{i}" for i in range(300)]}, "data_tags"),
])
def test_oversized_selection_fields_are_422(
    client: FlaskClient, auth: dict[str, str], enqueued: list[RunRef],
    body: dict[str, Any], field: str,
) -> None:
    for path in ("/train", "/dataset"):
        response = client.post(f"{P}{path}", json={"model_id": "m", **body}
                               if path == "/train" else body, headers=auth)
        assert response.status_code == 422, response.get_data(as_text=True)
        assert field in response.get_json()["error"]["details"]["fields"]
    assert enqueued == []


def test_the_stored_run_request_stays_small(
    client: FlaskClient, auth: dict[str, str], enqueued: list[RunRef],
    fake_redis: fakeredis.FakeRedis,
) -> None:
    # 100 conditions of 1,000 values each pass every per-field cap, but not the total
    cond = {"field": "id", "op": "in", "value": [f"id-{i:05d}" for i in range(1000)]}
    body = {"model_id": "big", "data_filters": {"entities": [cond] * 100}}
    response = client.post(f"{P}/train", json=body, headers=auth)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "request_too_large"
    assert enqueued == [] and not fake_redis.exists("recsys:t:acme:model:big")
