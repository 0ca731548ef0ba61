"""Fresh models through the Flask test client (no broker): warm-start checks, serve and pin,
kept versions side by side, schedules and their ticks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import fakeredis
import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.context import Services
from shared.data.batches import BatchMeta, new_batch_ids, record_batches
from shared.fresh.schedules import entry_name
from shared.fresh.ticks import run_tick
from shared.models.state import STATE_ARRAYS, ModelState, save_state
from shared.runs.ending import complete_run
from shared.runs.lifecycle import start_attempt, update_run
from shared.runs.ref import RunRef

P = "/v1/recommender"



def _svc(app: Flask) -> Services:
    svc: Services = app.extensions["recsys"]
    return svc


def _state(k: int = 32, loss: str = "warp") -> ModelState:
    arrays = {name: np.zeros((2, k) if "bias" not in name else 2, dtype=np.float32)
              for name in STATE_ARRAYS}
    names = np.array(["id:a", "id:b"])
    return ModelState(arrays=arrays, user_feature_names=names, item_feature_names=names,
                      loss=loss, no_components=k)


def _complete(app: Flask, model_id: str, version: int, precision: float = 0.1,
              batch_ids: list[str] | None = None) -> dict[str, Any]:
    """What a worker does: claim, save the state, complete (the version serves unless pinned)."""
    svc = _svc(app)
    ref = RunRef("acme", model_id, version)
    start_attempt(svc.redis, ref, "w", 60)
    update_run(svc.redis, ref, "w", fields={"data_batch_ids": batch_ids or []})
    save_state(svc.storage, "acme", model_id, version, _state())
    status, _ = complete_run(svc.redis, None, ref, owner="w", keep_versions=3,
                             message="Training completed.", model_fields={},
                             fields={"metrics": {"k": 10, "precision_at_k": precision}})
    assert status is not None
    return dict(status)


def _train(client: FlaskClient, auth: dict[str, str], body: dict[str, Any]) -> Any:
    return client.post(f"{P}/train", json=body, headers=auth)


def test_warm_start_needs_a_serving_version(
    client: FlaskClient, auth: dict[str, str], enqueued: list[Any]
) -> None:
    response = _train(client, auth, {"model_id": "w1", "warm_start": True})
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "no_model_to_warm_start"
    assert enqueued == []


def test_warm_start_continues_the_serving_version_with_its_loss_and_size(
    app: Flask, client: FlaskClient, auth: dict[str, str], enqueued: list[Any]
) -> None:
    # Given a model whose version 1 serves
    _train(client, auth, {"model_id": "w2"})
    _complete(app, "w2", 1)

    # When a loss or size other than the parent's is asked for, it is a 422
    for hyper in ({"loss": "bpr"}, {"no_components": 8}):
        bad = _train(client, auth, {"model_id": "w2", "warm_start": True,
                                    "hyperparameters": hyper})
        assert bad.status_code == 422, bad.get_json()
        assert bad.get_json()["error"]["code"] == "warm_start_mismatch"

    # When a warm start leaves them out (or repeats them)
    ok = _train(client, auth, {"model_id": "w2", "warm_start": True,
                               "hyperparameters": {"loss": "warp", "epochs": 3}})

    # Then the run is queued with its parent in the status
    assert ok.status_code == 202, ok.get_json()
    body = ok.get_json()
    assert body["version"] == 2 and body["training"] == {"parent_version": 1}
    assert client.get(f"{P}/status/w2", headers=auth).get_json()["training"] == {
        "parent_version": 1}
    record = _svc(app).runs.record(RunRef("acme", "w2", 2))
    assert record is not None
    assert record["params"]["warm_start"] == {"parent_version": 1}
    assert record["params"]["hyperparameters"]["epochs"] == 3


def test_serve_pins_a_kept_version_until_the_next_serve(
    app: Flask, client: FlaskClient, auth: dict[str, str], enqueued: list[Any]
) -> None:
    # Given two completed versions
    for version, precision in ((1, 0.2), (2, 0.1)):
        _train(client, auth, {"model_id": "p"})
        _complete(app, "p", version, precision)
    model = client.get(f"{P}/models/p", headers=auth).get_json()
    assert model["serving_version"] == 2 and model["pinned"] is False
    assert [(v["version"], v["metrics"]["precision_at_k"], v["serving"])
            for v in model["kept_versions"]] == [(2, 0.1, True), (1, 0.2, False)]

    # When the operator rolls back to version 1
    served = client.post(f"{P}/models/p/serve", json={"version": 1}, headers=auth)
    assert served.status_code == 200, served.get_json()
    assert served.get_json()["serving_version"] == 1 and served.get_json()["pinned"] is True

    # Then later runs complete and are kept, but version 1 keeps serving, even past
    # the number of versions kept
    for version in (3, 4, 5):
        _train(client, auth, {"model_id": "p"})
        status = _complete(app, "p", version)
        assert "version 1 stays serving" in status["message"]
    model = client.get(f"{P}/models/p", headers=auth).get_json()
    assert model["serving_version"] == 1 and model["pinned"] is True
    assert model["versions"] == [1, 3, 4, 5]

    # And a serve without a pin lets the next run replace it
    client.post(f"{P}/models/p/serve", json={"version": 5, "pin": False}, headers=auth)
    _train(client, auth, {"model_id": "p"})
    _complete(app, "p", 6)
    assert client.get(f"{P}/models/p", headers=auth).get_json()["serving_version"] == 6


@pytest.mark.parametrize(("body", "status"), [
    ({"version": 9}, 404), ({"version": "1"}, 422), ({}, 422), ({"version": 1, "x": 1}, 422),
])
def test_serve_refuses_what_is_not_a_kept_version(
    app: Flask, client: FlaskClient, auth: dict[str, str], enqueued: list[Any],
    body: dict[str, Any], status: int,
) -> None:
    _train(client, auth, {"model_id": "q"})
    _complete(app, "q", 1)
    response = client.post(f"{P}/models/q/serve", json=body, headers=auth)
    assert response.status_code == status, response.get_json()
    assert "error" in response.get_json()
    assert client.post(f"{P}/models/nope/serve", json={"version": 1},
                       headers=auth).status_code == 404


def _entry_key(model_id: str) -> str:
    return "recsys:redbeat:" + entry_name("acme", model_id)


def test_schedule_put_get_delete(
    client: FlaskClient, auth: dict[str, str], fake_redis: fakeredis.FakeRedis
) -> None:
    url = f"{P}/models/s1/schedule"
    assert client.get(url, headers=auth).status_code == 404
    put = client.put(url, headers=auth, json={
        "interval_minutes": 60, "train": {"data_tags": ["shop"]}, "warm_start": True})
    assert put.status_code == 200, put.get_json()
    body = put.get_json()
    assert body["interval_minutes"] == 60 and body["warm_start"] is True
    assert body["only_with_new_data"] is True and body["last_tick"] is None
    assert body["train"] == {"data_tags": ["shop"]} and body["next_run_at"].endswith("Z")
    # the beat entry is in Redis, in redbeat's schedule
    assert fake_redis.zscore("recsys:redbeat::schedule", _entry_key("s1")) is not None
    assert client.get(url, headers=auth).get_json()["warm_start"] is True

    cron = client.put(url, headers=auth, json={"cron": "0 3 * * *", "train": {}})
    assert cron.status_code == 200 and cron.get_json()["cron"] == "0 3 * * *"
    assert cron.get_json()["next_run_at"].endswith("T03:00:00Z")

    assert client.delete(url, headers=auth).status_code == 200
    assert client.get(url, headers=auth).status_code == 404
    assert client.delete(url, headers=auth).status_code == 404
    assert not fake_redis.exists(_entry_key("s1"))
    assert fake_redis.zscore("recsys:redbeat::schedule", _entry_key("s1")) is None


@pytest.mark.parametrize("body", [
    {"train": {}},
    {"interval_minutes": 5, "cron": "* * * * *", "train": {}},
    {"interval_minutes": 0.5, "train": {}},
    {"interval_minutes": 5},
    {"cron": "61 * * * *", "train": {}},
    {"cron": "* * * *", "train": {}},
    {"interval_minutes": 5, "train": {"model_id": "x"}},
    {"interval_minutes": 5, "train": {"hyperparameters": {"loss": "nope"}}},
    {"interval_minutes": 5, "tune": {"model_id": "x"}},
    {"interval_minutes": 5, "train": {}, "extra": 1},
])
def test_bad_schedules_are_422(client: FlaskClient, auth: dict[str, str],
                               body: dict[str, Any]) -> None:
    response = client.put(f"{P}/models/s2/schedule", headers=auth, json=body)
    assert response.status_code == 422, response.get_json()
    assert "error" in response.get_json()


def test_deleting_a_model_deletes_its_schedule(
    app: Flask, client: FlaskClient, auth: dict[str, str], enqueued: list[Any],
    fake_redis: fakeredis.FakeRedis,
) -> None:
    client.put(f"{P}/models/d1/schedule", headers=auth,
               json={"interval_minutes": 5, "train": {}})
    _train(client, auth, {"model_id": "d1"})
    _complete(app, "d1", 1)
    assert client.delete(f"{P}/models/d1", headers=auth).status_code == 200
    assert client.get(f"{P}/models/d1/schedule", headers=auth).status_code == 404
    assert not fake_redis.exists(_entry_key("d1"))


def _batch(app: Flask, tag: str) -> str:
    batch_id = new_batch_ids(1, datetime.now(UTC))[0]
    record_batches(_svc(app).redis, "acme", [BatchMeta(
        batch_id=batch_id, timestamp=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        tags=(tag,), kind="interactions", entity_count=0, interaction_count=1, bytes=1)])
    return batch_id


def test_ticks_decide_and_record_their_outcome(
    app: Flask, client: FlaskClient, auth: dict[str, str], enqueued: list[Any]
) -> None:
    svc = _svc(app)
    client.put(f"{P}/models/t1/schedule", headers=auth, json={
        "interval_minutes": 5, "train": {"data_tags": ["shop"]}, "warm_start": True})

    def tick() -> dict[str, Any]:
        return run_tick(svc.runs, svc.celery, svc.storage, "acme", "t1")

    first = _batch(app, "shop")
    # a model with nothing serving trains from scratch
    assert tick()["outcome"] == "started" and enqueued == [RunRef("acme", "t1", 1)]
    # while it trains, ticks skip
    assert tick()["outcome"] == "skipped_already_training"
    _complete(app, "t1", 1, batch_ids=[first])
    # nothing new since version 1 started
    assert tick()["outcome"] == "skipped_no_new_data"
    _batch(app, "other-tag")
    assert tick()["outcome"] == "skipped_no_new_data"
    # a new batch under the schedule's tag starts a warm start from version 1
    _batch(app, "shop")
    started = tick()
    assert started["outcome"] == "started" and started["version"] == 2
    assert svc.runs.status(RunRef("acme", "t1", 2))["training"] == {"parent_version": 1}

    schedule = client.get(f"{P}/models/t1/schedule", headers=auth).get_json()
    assert schedule["last_tick"]["outcome"] == "started"
    assert [t["outcome"] for t in schedule["recent_ticks"]] == [
        "started", "skipped_no_new_data", "skipped_no_new_data",
        "skipped_already_training", "started"]


def test_a_tick_the_service_refuses_is_recorded_as_refused(
    app: Flask, client: FlaskClient, auth: dict[str, str], enqueued: list[Any]
) -> None:
    svc = _svc(app)
    _train(client, auth, {"model_id": "t2"})
    _complete(app, "t2", 1)
    client.put(f"{P}/models/t2/schedule", headers=auth, json={
        "interval_minutes": 5, "train": {"hyperparameters": {"no_components": 8}},
        "warm_start": True, "only_with_new_data": False})
    tick = run_tick(svc.runs, svc.celery, svc.storage, "acme", "t2")
    assert tick["outcome"] == "refused" and "no_components" in tick["message"]
    assert enqueued == [RunRef("acme", "t2", 1)]  # only the first, by hand


def test_a_schedule_can_run_a_search_each_tick(
    app: Flask, client: FlaskClient, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a schedule whose work is a POST /tune body
    sent: list[str] = []
    monkeypatch.setattr("shared.runs.tuning.enqueue_search",
                        lambda runs, ref: sent.append(ref.model_id))
    response = client.put(f"{P}/models/s1/schedule", headers=auth, json={
        "interval_minutes": 60, "tune": {"data_tags": ["shop"], "search": {"trials": 4}}})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["tune"]["search"] == {"trials": 4}
    assert "train" not in response.get_json()
    _batch(app, "shop")
    # When it ticks, a search is queued (phase tuning), not a plain run
    svc = _svc(app)
    tick = run_tick(svc.runs, svc.celery, svc.storage, "acme", "s1")
    assert tick["outcome"] == "started" and sent == ["s1"], tick
    status = svc.runs.status(RunRef("acme", "s1", 1))
    assert status["phase"] == "tuning" and status["tuning"]["trials_total"] == 4


@pytest.mark.parametrize("body", [
    {"interval_minutes": 60, "train": {}, "tune": {}},
    {"interval_minutes": 60, "tune": {"search": {"trials": 0}}},
    {"interval_minutes": 60, "tune": {}, "warm_start": True},
    {"interval_minutes": 60, "tune": {"evaluation": {"holdout": 0}}},
])
def test_bad_scheduled_searches_are_422(client: FlaskClient, auth: dict[str, str],
                                        body: dict[str, Any]) -> None:
    response = client.put(f"{P}/models/s2/schedule", headers=auth, json=body)
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["code"]
