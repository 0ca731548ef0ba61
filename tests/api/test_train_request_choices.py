"""POST /train accepts "auto" for epochs and metadata features; the stored parameters and the
OpenAPI document say what it means (API.md, "Choices made from the data")."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from shared.runs.ref import RunRef
from worker.params import train_params

P = "/v1/recommender"



def _dry(client: FlaskClient, auth: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"{P}/train", json={**body, "dry_run": True}, headers=auth)
    assert response.status_code == 200, response.get_json()
    params: dict[str, Any] = response.get_json()["parameters"]
    return params


def test_defaults_are_auto_and_reach_the_worker_as_such(
    client: FlaskClient, auth: dict[str, str], enqueued: list[RunRef]
) -> None:
    params = _dry(client, auth, {})
    assert params["use_metadata_features"] == "auto"
    hp = params["hyperparameters"]
    assert (hp["epochs_auto"], hp["epochs"], hp["max_epochs"]) == (True, 100, 100)
    worker = train_params(params, threads=1)
    assert worker.epochs_auto and worker.max_epochs == 100 and worker.metadata == "auto"


def test_auto_without_a_holdout_is_20_epochs_and_fixed_values_stay_fixed(
    client: FlaskClient, auth: dict[str, str], enqueued: list[RunRef]
) -> None:
    hp = _dry(client, auth, {"evaluation": {"holdout": 0}})["hyperparameters"]
    assert (hp["epochs_auto"], hp["epochs"]) == (True, 20)
    fixed = _dry(client, auth, {"hyperparameters": {"epochs": 7, "max_epochs": 9},
                                "use_metadata_features": False})
    assert (fixed["hyperparameters"]["epochs_auto"], fixed["hyperparameters"]["epochs"]) == (
        False, 7)
    worker = train_params(fixed, threads=1)
    assert not worker.epochs_auto and worker.hyperparameters.epochs == 7
    assert worker.metadata is False
    capped = _dry(client, auth, {"hyperparameters": {"epochs": "auto", "max_epochs": 30},
                                 "use_metadata_features": "auto"})
    assert capped["hyperparameters"]["epochs"] == 30
    assert train_params(capped, threads=1).max_epochs == 30


def test_a_run_with_auto_is_queued(
    client: FlaskClient, auth: dict[str, str], enqueued: list[RunRef]
) -> None:
    body = {"model_id": "a", "hyperparameters": {"epochs": "auto", "max_epochs": 50},
            "use_metadata_features": "auto"}
    assert client.post(f"{P}/train", json=body, headers=auth).status_code == 202
    assert [ref.model_id for ref in enqueued] == ["a"]


@pytest.mark.parametrize("body", [
    {"hyperparameters": {"epochs": "sometimes"}},
    {"hyperparameters": {"epochs": 0}},
    {"hyperparameters": {"epochs": "AUTO"}},
    {"hyperparameters": {"epochs": True}},
    {"hyperparameters": {"max_epochs": 0}},
    {"hyperparameters": {"max_epochs": "auto"}},
    {"use_metadata_features": "yes"},
    {"use_metadata_features": None},
])
def test_other_values_are_422_in_the_contract_shape(
    client: FlaskClient, auth: dict[str, str], enqueued: list[RunRef], body: dict[str, Any]
) -> None:
    response = client.post(f"{P}/train", json=body, headers=auth)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert next(iter(body)) in str(error["details"])
    assert enqueued == []


def test_the_openapi_document_describes_auto_and_the_training_field(client: FlaskClient) -> None:
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    flat = str(schemas)
    assert "max_epochs" in flat and "'auto'" in flat
    status = next(s for name, s in schemas.items() if name.startswith("Status")
                  and "training" in s.get("properties", {}))
    assert status["properties"]["training"]
    for name in ("ndcg_at_k", "map_at_k", "coverage", "baseline_coverage"):
        assert name in flat
