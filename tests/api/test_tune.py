"""POST /tune through the Flask test client (no broker): validation and the queued status."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from shared.contracts import TASK_TUNE
from shared.runs.search import DEFAULT_SPACE
from tests.helpers.producer import SentTasks

P = "/v1/recommender"


def test_a_search_is_queued_with_phase_tuning_and_its_trials_listed(
        client: FlaskClient, auth: dict[str, str], sent: SentTasks) -> None:
    response = client.post(f"{P}/tune", headers=auth, json={
        "model_id": "m1", "search": {"trials": 3, "metric": "recall_at_k"}})
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert (body["status"], body["phase"], body["progress"]) == ("running", "tuning", 0)
    tuned = body["tuning"]
    assert (tuned["metric"], tuned["trials_total"], tuned["trials_done"], tuned["best"]) == (
        "recall_at_k", 3, 0, None)
    assert [t["state"] for t in tuned["trials"]] == ["queued"] * 3
    assert sent.sent == [(TASK_TUNE, {"tenant": "acme", "model_id": "m1", "version": 1})]
    status = client.get(f"{P}/status/m1", headers=auth).get_json()
    assert status["tuning"]["trials_total"] == 3
    # the model is busy while it tunes, as while it trains
    again = client.post(f"{P}/train", headers=auth, json={"model_id": "m1"})
    assert again.status_code == 409


def test_defaults_fill_the_search(client: FlaskClient, auth: dict[str, str], sent: SentTasks,
                                  fake_redis: Any) -> None:
    client.post(f"{P}/tune", headers=auth, json={"model_id": "m2"})
    from shared.runs.records import get_run

    record = get_run(fake_redis, "acme", "m2")
    assert record is not None
    assert record["params"]["search"] == {"trials": 20, "metric": "precision_at_k",
                                          "space": DEFAULT_SPACE, "parallelism": None}


@pytest.mark.parametrize("body, field", [
    ({"search": {"trials": 0}}, "search"),
    ({"search": {"trials": 201}}, "search"),
    ({"search": {"metric": "mrr"}}, "search"),
    ({"search": {"space": {"epochs": [1, 5]}}}, "search"),
    ({"search": {"space": {"learning_rate": [0, 0.1]}}}, "search"),
    ({"search": {"space": {"no_components": [64, 16]}}}, "search"),
    ({"search": {"space": {"no_components": [1, 1024]}}}, "search"),
    ({"search": {"space": {"no_components": [8.5, 16]}}}, "search"),
    ({"search": {"space": {"loss": ["warp", "hinge"]}}}, "search"),
    ({"search": {"space": {}}}, "search"),
    ({"search": {"parallelism": 0}}, "search"),
    ({"search": {"budget": 3}}, "search"),
    ({"evaluation": {"holdout": 0}}, "evaluation"),
    ({"dry_run": True}, "dry_run"),
    ({"interaction_weights": {"view": 2},
      "search": {"space": {"loss": ["warp", "warp-kos"]}}}, "search"),
])
def test_bad_searches_are_422_naming_the_field(
        client: FlaskClient, auth: dict[str, str], sent: SentTasks, body: dict[str, Any],
        field: str) -> None:
    response = client.post(f"{P}/tune", headers=auth, json=body)
    assert response.status_code == 422, response.get_json()
    error = response.get_json()["error"]
    assert field in str(error["details"]), error
    assert sent.sent == []


def test_tune_needs_the_train_scope(client: FlaskClient, sent: SentTasks,
                                    fake_redis: Any) -> None:
    from shared.keys import create_key

    raw, _ = create_key(fake_redis, "acme", ["recommend"])
    response = client.post(f"{P}/tune", headers={"apikey": raw}, json={})
    assert response.status_code == 403
