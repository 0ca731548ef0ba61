"""GET and POST /dataset: the totals a training run with the same selection would use."""

from __future__ import annotations

import json
import urllib.parse

from flask.testing import FlaskClient

URL = "/v1/recommender/dataset"


def _seed(client: FlaskClient, auth: dict[str, str]) -> None:
    res = client.post("/v1/recommender/data_batch", headers=auth, json={
        "entities": [{"id": "u1", "type": "user"}, {"id": "i1", "type": "item",
                                                     "metadata": {"colour": "red"}},
                     {"id": "i2", "type": "item", "metadata": {"colour": "blue"}}],
        "interactions": [
            {"type": "view", "source_id": "u1", "target_id": "i1", "timestamp": 1_700_000_000},
            {"type": "buy", "source_id": "u1", "target_id": "i2"},
            {"type": "view", "source_id": "u2", "target_id": "i2", "timestamp": "2001-01-01"},
        ],
        "tags": ["shop"],
    })
    assert res.status_code == 201
    client.post("/v1/recommender/data_batch", headers=auth, json={
        "interactions": [{"source_id": "u9", "target_id": "i9"}], "tags": ["other"]})


def test_get_dataset_honours_tags_age_and_filters(client: FlaskClient,
                                                  auth: dict[str, str]) -> None:
    _seed(client, auth)
    everything = client.get(URL, headers=auth).json
    assert everything["batch_count"] == 3 and everything["interactions"]["total"] == 4
    shop = client.get(URL + "?data_tags=shop,nope", headers=auth).json
    assert shop["batch_count"] == 2
    assert shop["interactions"] == {"total": 3, "by_type": {"buy": 1, "view": 2}}
    assert shop["entities"]["by_type"] == {"item": 2, "user": 1}
    assert shop["sources"] == 2 and shop["targets"] == 2
    recent = client.get(URL + "?data_tags=shop&maximum_interaction_age_days=3650",
                        headers=auth).json
    assert recent["interactions"]["total"] == 2  # the 2001 one is cut, the undated one kept
    filters = urllib.parse.quote(json.dumps(
        {"entities": [{"field": "metadata.colour", "op": "eq", "value": "red"}]}))
    red = client.get(URL + f"?data_tags=shop&data_filters={filters}", headers=auth).json
    # u1 and u2 lack colour, so their interactions go too: nothing is left
    assert red["interactions"]["total"] == 0 and red["entities"]["total"] == 1


def test_post_dataset_takes_a_train_body(client: FlaskClient, auth: dict[str, str]) -> None:
    _seed(client, auth)
    body = {"model_id": "m1", "data_tags": ["shop"], "hyperparameters": {"epochs": 3},
            "data_filters": {"interactions": [{"field": "type", "op": "eq", "value": "view"}]}}
    res = client.post(URL, headers=auth, json=body)
    assert res.status_code == 200, res.json
    assert res.json["interactions"] == {"total": 2, "by_type": {"view": 2}}
    assert res.json["timestamps"]["min"] == "2001-01-01T00:00:00Z"


def test_bad_selections_are_422(client: FlaskClient, auth: dict[str, str]) -> None:
    for query in ["?maximum_interaction_age_days=0", "?maximum_interaction_age_days=x",
                  "?data_filters=%7Bnope", "?data_filters=%5B%5D", "?colour=red"]:
        res = client.get(URL + query, headers=auth)
        assert res.status_code == 422, (query, res.json)
        assert res.json["error"]["code"] in {"invalid_data_selection", "validation_failed"}
    res = client.post(URL, headers=auth, json={"data_filters": {"entities": [
        {"field": "price", "op": "gt", "value": 3}]}})
    assert res.status_code == 422
    assert "data_filters.entities[0]" in res.json["error"]["details"]["fields"]
    assert client.post(URL, headers=auth, json=[1]).status_code == 422
    deep = "[" * 5000 + "]" * 5000
    res = client.post(URL, headers={**auth, "Content-Type": "application/json"}, data=deep)
    assert res.status_code == 400


def test_dataset_needs_data_read(client: FlaskClient, fake_redis: object) -> None:
    from shared.keys import create_key

    writer, _ = create_key(fake_redis, "acme", ["data:write"])  # type: ignore[arg-type]
    assert client.get(URL, headers={"apikey": writer}).status_code == 403
    assert client.get(URL).status_code == 401


def test_openapi_documents_the_data_endpoints(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    paths = spec["paths"]
    upload = paths["/v1/recommender/data_batch"]["post"]
    assert set(upload["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert "201" in upload["responses"]
    assert {p["name"] for p in paths["/v1/recommender/data_batch"]["get"]["parameters"]} >= {
        "batch_id", "tags"}
    assert "/v1/recommender/dataset" in paths
