"""POST /data_batch with a JSON body, GET and DELETE /data_batch, through the Flask test client."""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq
from flask import Flask
from flask.testing import FlaskClient

from shared.storage import batch_path

URL = "/v1/recommender/data_batch"


def _stored(app: Flask, tenant: str, batch_id: str) -> list[dict[str, Any]]:
    storage = app.extensions["recsys"].storage
    rows: list[dict[str, Any]] = pq.read_table(
        storage.full_path(batch_path(tenant, batch_id)), filesystem=storage.fs
    ).to_pylist()
    return rows


def test_json_upload_gives_one_batch_per_list(
    app: Flask, client: FlaskClient, auth: dict[str, str]
) -> None:
    # given a JSON body with both lists and tags
    body = {
        "entities": [
            {"id": "u1", "type": "user", "metadata": {"age": 31}},
            {"id": "i1", "type": "item", "name": "Lamp", "media_url": "http://x/1.png"},
            {"id": "i2", "type": ""},
        ],
        "interactions": [
            {"type": "view", "source_id": "u1", "target_id": "i1",
             "timestamp": "2024-01-01T00:00:00Z"},
            {"source_id": "u1", "target_id": "i2", "timestamp": 1700000000},
        ],
        "tags": ["shop", "jan"],
    }
    # when it is posted
    res = client.post(URL, json=body, headers=auth)
    # then two batches are reported, with their counts and tags
    assert res.status_code == 201, res.json
    ent, inter = res.json
    assert ent["kind"] == "entities" and ent["entity_count"] == 3
    assert ent["interaction_count"] == 0
    assert inter["kind"] == "interactions" and inter["interaction_count"] == 2
    assert ent["tags"] == ["shop", "jan"] and ent["bytes"] > 0
    assert ent["batch_id"] < inter["batch_id"] and ent["timestamp"].endswith("Z")
    # and what is stored is what was sent, with defaults filled in
    rows = _stored(app, "acme", ent["batch_id"])
    assert rows[0] == {"id": "u1", "type": "user", "name": None,
                       "metadata": '{"age":31}', "media_url": None}
    assert rows[2]["type"] == "default" and rows[2]["metadata"] == "{}"
    irows = _stored(app, "acme", inter["batch_id"])
    assert irows[1]["type"] == "default"
    assert irows[1]["timestamp"].timestamp() == 1700000000
    # and the listing shows both
    listed = client.get(URL, headers=auth).json
    assert [b["batch_id"] for b in listed] == [ent["batch_id"], inter["batch_id"]]


def test_json_upload_bad_rows_give_422_and_store_nothing(
    app: Flask, client: FlaskClient, auth: dict[str, str]
) -> None:
    body = {
        "entities": [{"id": "u1"}],
        "interactions": [
            {"source_id": "", "target_id": "i1"},
            {"source_id": "u1", "target_id": "i1", "timestamp": 1700000000000},
            {"source_id": "u1", "target_id": "i1", "metadata": "[1, 2]"},
        ],
    }
    res = client.post(URL, json=body, headers=auth)
    assert res.status_code == 422
    errors = res.json["error"]["details"]["errors"]
    assert [(e["index"], e["column"]) for e in errors] == [
        (0, "source_id"), (1, "timestamp"), (2, "metadata")]
    assert "milliseconds" in errors[1]["message"]
    assert client.get(URL, headers=auth).json == []
    storage = app.extensions["recsys"].storage
    assert storage.list_dir("tenants/acme/batches") == []


def test_tags_that_are_not_strings_are_refused(client: FlaskClient, auth: dict[str, str]) -> None:
    res = client.post(URL, json={"entities": [{"id": "a"}], "tags": ["ok", 3]}, headers=auth)
    assert res.status_code == 422
    assert res.json["error"]["code"] == "invalid_tags"
    assert client.get(URL, headers=auth).json == []


def test_wrong_content_type_is_415(client: FlaskClient, auth: dict[str, str]) -> None:
    res = client.post(URL, data="id\nx", headers={**auth, "Content-Type": "text/csv"})
    assert res.status_code == 415
    assert res.json["error"]["code"] == "unsupported_media_type"


def test_empty_and_unknown_bodies_are_refused(client: FlaskClient, auth: dict[str, str]) -> None:
    assert client.post(URL, json={"entities": []}, headers=auth).status_code == 422
    res = client.post(URL, json={"entites": [{"id": "x"}]}, headers=auth)
    assert res.status_code == 422 and "entites" in res.json["error"]["message"]
    assert client.post(URL, json=[1, 2], headers=auth).status_code == 422


def test_list_filters_by_all_tags_and_ids(client: FlaskClient, auth: dict[str, str]) -> None:
    def up(tags: list[str]) -> str:
        res = client.post(URL, json={"entities": [{"id": "x"}], "tags": tags}, headers=auth)
        assert res.status_code == 201
        batch_id: str = res.json[0]["batch_id"]
        return batch_id

    a, b, c = up(["x", "y"]), up(["x"]), up(["y", "z"])
    ids = lambda q: [m["batch_id"] for m in client.get(URL + q, headers=auth).json]  # noqa: E731
    assert ids("?tags=x") == [a, b]
    assert ids("?tags=x,y") == [a]
    assert ids("?tags=x&tags=y") == [a]
    assert ids(f"?batch_id={a},{c}") == [a, c]
    assert ids(f"?batch_id={b}&tags=y") == []
    assert ids("?tags=nope") == []
    res = client.get(URL + "?tag=x", headers=auth)  # a typo is an error, not "everything"
    assert res.status_code == 422 and "tag" in res.json["error"]["details"]["fields"]


def test_delete_needs_a_selection_and_removes_files(
    app: Flask, client: FlaskClient, auth: dict[str, str]
) -> None:
    res = client.post(URL, json={"entities": [{"id": "x"}], "tags": ["gone"]}, headers=auth)
    keep = client.post(URL, json={"entities": [{"id": "y"}], "tags": ["kept"]}, headers=auth)
    batch_id = res.json[0]["batch_id"]
    assert client.delete(URL, headers=auth).status_code == 400
    deleted = client.delete(URL + "?tags=gone", headers=auth)
    assert deleted.status_code == 200
    assert [m["batch_id"] for m in deleted.json] == [batch_id]
    storage = app.extensions["recsys"].storage
    assert not storage.exists(batch_path("acme", batch_id))
    assert [m["batch_id"] for m in client.get(URL, headers=auth).json] == [
        keep.json[0]["batch_id"]]
    assert client.delete(URL + "?tags=gone", headers=auth).json == []


def test_scopes_and_tenants(client: FlaskClient, fake_redis: Any, auth: dict[str, str]) -> None:
    from shared.keys import create_key

    reader, _ = create_key(fake_redis, "acme", ["data:read"])
    other, _ = create_key(fake_redis, "globex", ["data:read", "data:write"])
    assert client.post(URL, json={"entities": [{"id": "x"}]}, headers={"apikey": reader}
                       ).status_code == 403
    assert client.get(URL).status_code == 401
    client.post(URL, json={"entities": [{"id": "x"}]}, headers=auth)
    assert len(client.get(URL, headers={"apikey": reader}).json) == 1
    assert client.get(URL, headers={"apikey": other}).json == []
    assert client.delete(URL + "?tags=x", headers={"apikey": reader}).status_code == 403
