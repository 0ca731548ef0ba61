"""Input rules over HTTP: every hostile value is a JSON 4xx, never a 500; the resource index."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from flask.testing import FlaskClient

PREFIX = "/v1/recommender"


def check_contract_error(body: Any) -> None:
    """The contract's error shape: code, message and details, nothing else."""
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@pytest.mark.parametrize("age", [800_000, 10**12, 36_501])
def test_get_dataset_refuses_a_huge_age(client: FlaskClient, auth: dict[str, str],
                                        age: int) -> None:
    res = client.get(f"{PREFIX}/dataset?maximum_interaction_age_days={age}", headers=auth)
    assert res.status_code == 422, res.json
    check_contract_error(res.json)
    assert "maximum_interaction_age_days" in res.json["error"]["details"]["fields"]


@pytest.mark.parametrize("age", [800_000, 10**12])
def test_post_dataset_refuses_a_huge_age(client: FlaskClient, auth: dict[str, str],
                                         age: int) -> None:
    res = client.post(f"{PREFIX}/dataset", headers=auth,
                      json={"maximum_interaction_age_days": age})
    assert res.status_code == 422, res.json
    check_contract_error(res.json)


@pytest.mark.parametrize("age", [800_000, 10**12])
def test_train_refuses_a_huge_age_dry_run_or_not(client: FlaskClient, auth: dict[str, str],
                                                 age: int) -> None:
    for dry_run in (True, False):
        res = client.post(f"{PREFIX}/train", headers=auth,
                          json={"maximum_interaction_age_days": age, "dry_run": dry_run})
        assert res.status_code == 422, res.json
        assert "maximum_interaction_age_days" in res.json["error"]["details"]["fields"]


def test_train_refuses_a_model_id_with_a_trailing_newline(client: FlaskClient,
                                                          auth: dict[str, str]) -> None:
    res = client.post(f"{PREFIX}/train", headers=auth, json={"model_id": "shop\n"})
    assert res.status_code == 422
    assert "model_id" in res.json["error"]["details"]["fields"]


@pytest.mark.parametrize("url", [f"{PREFIX}/status?model_id=m&version={10**30}",
                                 f"{PREFIX}/status/m?version={10**30}"])
def test_a_huge_version_is_a_422(client: FlaskClient, auth: dict[str, str], url: str) -> None:
    res = client.get(url, headers=auth)
    assert res.status_code == 422, res.json
    check_contract_error(res.json)


def test_too_many_data_tags_are_refused(client: FlaskClient, auth: dict[str, str]) -> None:
    res = client.post(f"{PREFIX}/dataset", headers=auth,
                      json={"data_tags": [f"t{i}" for i in range(1001)]})
    assert res.status_code == 422


def test_an_upload_with_a_long_id_stores_nothing(client: FlaskClient,
                                                 auth: dict[str, str]) -> None:
    # given a JSON upload whose second interaction has a 257-character source id
    res = client.post(f"{PREFIX}/data_batch", headers=auth, json={"interactions": [
        {"source_id": "u1", "target_id": "i1"}, {"source_id": "u" * 257, "target_id": "i1"}]})
    # then it is a 422 naming the item and column, and nothing is listed
    assert res.status_code == 422
    errors = res.json["error"]["details"]["errors"]
    assert [(e["index"], e["column"]) for e in errors] == [(1, "source_id")]
    assert client.get(f"{PREFIX}/data_batch", headers=auth).json == []


def test_a_csv_upload_with_a_nul_id_is_a_line_error(client: FlaskClient,
                                                    auth: dict[str, str]) -> None:
    csv = b"id,type,name,metadata,media_url\ni1,item,,,\ni\x002,item,,,\n"
    res = client.post(f"{PREFIX}/data_batch", headers=auth,
                      data={"files": [(io.BytesIO(csv), "e.csv")]},
                      content_type="multipart/form-data")
    assert res.status_code == 422, res.json
    errors = res.json["error"]["details"]["errors"]
    assert [(e["file"], e["line"], e["column"]) for e in errors] == [("e.csv", 3, "id")]


def test_50000_tags_answer_too_many_tags_quickly(client: FlaskClient,
                                                 auth: dict[str, str]) -> None:
    body = {"interactions": [{"source_id": "u1", "target_id": "i1"}],
            "tags": [f"tag{i}" for i in range(50_000)]}
    started = time.perf_counter()
    res = client.post(f"{PREFIX}/data_batch", headers=auth, json=body)
    elapsed = time.perf_counter() - started
    assert res.status_code == 422 and res.json["error"]["code"] == "too_many_tags"
    assert elapsed < 2.0  # quadratic de-duplication took tens of seconds


def test_the_api_root_lists_its_resources(client: FlaskClient) -> None:
    # when a new user opens the banner's first link, without a key
    res = client.get(PREFIX)
    # then it lists the resources and where the docs are
    assert res.status_code == 200 and res.is_json
    paths = {r["path"]: r["methods"] for r in res.json["resources"]}
    assert set(paths[f"{PREFIX}/data_batch"]) == {"GET", "POST", "DELETE"}
    assert paths[f"{PREFIX}/train"] == ["POST"]
    assert f"{PREFIX}/status/{{model_id}}" in paths
    assert f"{PREFIX}/recommended_items" in paths
    assert res.json["docs"].endswith("/docs")
    assert res.json["openapi"].endswith("/openapi.json")
    assert client.get(res.json["openapi"]).status_code == 200
