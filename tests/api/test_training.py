"""POST /train, status, models and cancel through the Flask test client (no broker)."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from flask.testing import FlaskClient

from shared.runs.ending import complete_run
from shared.runs.lifecycle import start_attempt
from shared.runs.ref import RunRef

P = "/v1/recommender"



def test_train_queues_a_run_and_status_reads_it(
    client: FlaskClient, auth: dict[str, str], enqueued: list[Any]
) -> None:
    response = client.post(f"{P}/train", json={"model_id": "m1"}, headers=auth)
    assert response.status_code == 202
    body = response.get_json()
    assert (body["model_id"], body["version"], body["status"], body["phase"],
            body["progress"]) == ("m1", 1, "running", "queued", 0)
    assert body["start_timestamp"] is None and body["callback"] is None
    assert enqueued == [RunRef("acme", "m1", 1)]
    for url in (f"{P}/status?model_id=m1", f"{P}/status/m1", f"{P}/status/m1?version=1"):
        got = client.get(url, headers=auth)
        assert got.status_code == 200 and got.get_json()["phase"] == "queued"
    model = client.get(f"{P}/models/m1", headers=auth).get_json()
    assert model["serving_version"] is None and model["status"]["version"] == 1
    assert [m["model_id"] for m in client.get(f"{P}/models", headers=auth).get_json()] == ["m1"]


def test_a_generated_model_id_is_returned(
    client: FlaskClient, auth: dict[str, str], enqueued: list[Any]
) -> None:
    response = client.post(f"{P}/train", json={}, headers=auth)
    assert response.status_code == 202
    assert response.get_json()["model_id"].startswith("model-")


def test_a_model_already_training_gets_409_with_its_status(
    client: FlaskClient, auth: dict[str, str], enqueued: list[Any]
) -> None:
    client.post(f"{P}/train", json={"model_id": "m1"}, headers=auth)
    again = client.post(f"{P}/train", json={"model_id": "m1"}, headers=auth)
    assert again.status_code == 409
    error = again.get_json()["error"]
    assert error["code"] == "model_training" and error["details"]["phase"] == "queued"
    assert len(enqueued) == 1


@pytest.mark.parametrize("body, field", [
    ({"hyperparameters": {"no_components": 0}}, "hyperparameters"),
    ({"hyperparameters": {"no_components": 513}}, "hyperparameters"),
    ({"hyperparameters": {"epochs": 1001}}, "hyperparameters"),
    ({"hyperparameters": {"learning_rate": 0}}, "hyperparameters"),
    ({"hyperparameters": {"item_alpha": 1}}, "hyperparameters"),
    ({"hyperparameters": {"user_alpha": -0.1}}, "hyperparameters"),
    ({"hyperparameters": {"max_sampled": 0}}, "hyperparameters"),
    ({"hyperparameters": {"loss": "logistic"}}, "hyperparameters"),
    ({"hyperparameters": {"epochs": "10"}}, "hyperparameters"),
    ({"hyperparameters": {"surprise": 1}}, "hyperparameters"),
    ({"evaluation": {"holdout": 0.6}}, "evaluation"),
    ({"evaluation": {"k": 0}}, "evaluation"),
    ({"model_id": "bad id!"}, "model_id"),
    ({"model_id": "x" * 129}, "model_id"),
    ({"model_id": ".."}, "model_id"),
    ({"model_id": "."}, "model_id"),
    ({"maximum_interaction_age_days": 0}, "maximum_interaction_age_days"),
    ({"interaction_weights": {"view": -1}}, "interaction_weights"),
    ({"hyperparameters": {"loss": "warp-kos"}, "interaction_weights": {"view": 2}},
     "interaction_weights"),
    ({"unknown_field": 1}, "unknown_field"),
])
def test_invalid_parameters_are_422_naming_the_field(
    client: FlaskClient, auth: dict[str, str], enqueued: list[Any], body: dict[str, Any],
    field: str,
) -> None:
    response = client.post(f"{P}/train", json=body, headers=auth)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert field in str(error["details"])
    assert enqueued == []


def test_bad_filters_and_forbidden_callbacks_are_422(
    client: FlaskClient, auth: dict[str, str], enqueued: list[Any]
) -> None:
    bad_filter = {"data_filters": {"entities": [{"field": "type", "op": "like", "value": 1}]}}
    assert client.post(f"{P}/train", json=bad_filter, headers=auth).status_code == 422
    refused = client.post(f"{P}/train", json={"callback_url": "ftp://example.com/x"},
                          headers=auth)
    assert refused.status_code == 422
    assert refused.get_json()["error"]["code"] == "callback_url_forbidden"
    assert enqueued == []


def test_unknown_models_are_404_and_scopes_are_checked(
    client: FlaskClient, auth: dict[str, str], fake_redis: fakeredis.FakeRedis
) -> None:
    for method, url in (("get", f"{P}/status/nope"), ("get", f"{P}/status?model_id=nope"),
                        ("get", f"{P}/models/nope"), ("delete", f"{P}/models/nope"),
                        ("post", f"{P}/train/nope/cancel"), ("get", f"{P}/status/bad%20id")):
        response = getattr(client, method)(url, headers=auth)
        assert response.status_code == 404, url
    assert client.get(f"{P}/status?model_id=x").status_code == 401
    from shared.keys import create_key

    raw, _ = create_key(fake_redis, "acme", ["recommend"])
    assert client.post(f"{P}/train", json={}, headers={"apikey": raw}).status_code == 403


def test_cancel_a_queued_run_ends_it_and_the_model_can_train_again(
    client: FlaskClient, auth: dict[str, str], enqueued: list[Any]
) -> None:
    client.post(f"{P}/train", json={"model_id": "m1"}, headers=auth)
    cancelled = client.post(f"{P}/train/m1/cancel", headers=auth)
    assert cancelled.status_code == 200
    body = cancelled.get_json()
    assert (body["status"], body["phase"]) == ("error", "cancelled")
    assert body["end_timestamp"] is not None
    assert client.post(f"{P}/train/m1/cancel", headers=auth).status_code == 409
    again = client.post(f"{P}/train", json={"model_id": "m1"}, headers=auth)
    assert again.status_code == 202 and again.get_json()["version"] == 2


def test_delete_removes_a_finished_model_but_not_a_training_one(
    client: FlaskClient, auth: dict[str, str], enqueued: list[Any],
    fake_redis: fakeredis.FakeRedis,
) -> None:
    client.post(f"{P}/train", json={"model_id": "m1"}, headers=auth)
    assert client.delete(f"{P}/models/m1", headers=auth).status_code == 409
    start_attempt(fake_redis, RunRef("acme", "m1", 1), "w", 60)
    complete_run(fake_redis, None, RunRef("acme", "m1", 1), owner="w", keep_versions=3,
                 message="done", model_fields={})
    assert client.get(f"{P}/models/m1", headers=auth).get_json()["serving_version"] == 1
    deleted = client.delete(f"{P}/models/m1", headers=auth)
    assert deleted.status_code == 200 and deleted.get_json()["versions"] == [1]
    assert client.get(f"{P}/models/m1", headers=auth).status_code == 404


def test_dry_run_with_no_data_creates_no_run(
    client: FlaskClient, auth: dict[str, str], enqueued: list[Any]
) -> None:
    response = client.post(f"{P}/train", json={"model_id": "d", "dry_run": True}, headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    assert body["dry_run"] is True and body["counts"]["interactions"] == 0
    assert body["parameters"]["hyperparameters"]["no_components"] == 32
    assert body["parameters"]["evaluation"] == {"holdout": 0.1, "max_sources": 10000, "k": 10}
    assert enqueued == []
    assert client.get(f"{P}/models/d", headers=auth).status_code == 404


def test_the_api_and_the_worker_parent_never_import_lightfm() -> None:
    """OpenMP is not fork-safe: nothing imported at start may pull LightFM in (DESIGN.md)."""
    import subprocess
    import sys

    code = ("import sys, api.app, api.training, worker.tasks, worker.runner; "
            "print(any(m.split('.')[0] == 'lightfm' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
