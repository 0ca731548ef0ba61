"""GET/POST /recommended_items through the Flask test client, on hand-built stored models."""

from __future__ import annotations

import csv
import dataclasses
import io
from typing import Any

import fakeredis
import numpy as np
import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.keys import create_key
from shared.models.artifact import ModelArtifact
from shared.runs.lifecycle import create_run
from shared.storage import Storage
from tests.helpers.models import brute, make_artifact, register

URL = "/v1/recommender/recommended_items"


@pytest.fixture
def model(fake_redis: fakeredis.FakeRedis, storage: Storage) -> ModelArtifact:
    """Model "m" of tenant acme: 8 users, 500 items, some seen pairs, metadata features."""
    art = make_artifact(n_sources=8, n_targets=500, seen={0: [1, 2, 3], 1: list(range(100))},
                        features=["country=fr", "country=de", "plan=pro"])
    register(fake_redis, storage, "acme", "m", art)
    return art


def recs(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.get_data(as_text=True)
    body = orjson.loads(response.get_data())
    assert set(body) == {"model_id", "version", "recommendations"}
    rows: list[dict[str, Any]] = body["recommendations"]
    return rows


def targets(rows: list[dict[str, Any]], source: str) -> list[str]:
    return [r["target_id"] for r in rows if r["source_id"] == source]


def test_one_source_matches_brute_force_ranking(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact
) -> None:
    resp = client.get(URL, query_string={"model_id": "m", "source_id": "u0"}, headers=auth)
    body = orjson.loads(resp.get_data())
    assert (body["model_id"], body["version"]) == ("m", 1)
    rows = recs(resp)
    assert targets(rows, "u0") == brute(model, 0, 10, True)
    assert [r["rank"] for r in rows] == list(range(1, 11))
    assert all(isinstance(r["score"], float) and r["fallback"] is False for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert resp.headers["X-Model-Version"] == "1"
    # Seen items never appear by default; with exclude_seen=false they may.
    assert not {"i1", "i2", "i3"} & set(targets(rows, "u0"))
    resp = client.get(URL, query_string={"model_id": "m", "source_id": "u1",
                                         "exclude_seen": "false", "max_recommendations": 25},
                      headers=auth)
    assert targets(recs(resp), "u1") == brute(model, 1, 25, False)


def test_list_of_sources_repeated_or_comma_separated_or_json(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact
) -> None:
    repeated = recs(client.get(URL + "?model_id=m&source_id=u2&source_id=u3,u4", headers=auth))
    posted = recs(client.post(URL, json={"model_id": "m", "source_id": ["u2", "u3", "u4"]},
                              headers=auth))
    assert repeated == posted
    assert list(dict.fromkeys(r["source_id"] for r in posted)) == ["u2", "u3", "u4"]
    for row, sid in ((2, "u2"), (3, "u3"), (4, "u4")):
        assert targets(posted, sid) == brute(model, row, 10, True)


def test_csv_has_the_header_and_the_same_rows(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact
) -> None:
    query = {"model_id": "m", "source_id": ["u0", "u5"], "max_recommendations": 3}
    resp = client.get(URL, query_string={**query, "output_format": "csv"}, headers=auth)
    assert resp.status_code == 200
    assert resp.mimetype == "text/csv"
    lines = list(csv.reader(io.StringIO(resp.get_data(as_text=True))))
    assert lines[0] == ["source_id", "target_id", "rank", "score"]
    as_json = recs(client.get(URL, query_string=query, headers=auth))
    assert [[r["source_id"], r["target_id"], str(r["rank"]), r["score"]] for r in as_json] == [
        [s, t, rk, float(sc)] for s, t, rk, sc in lines[1:]
    ]


def test_every_source_is_streamed_as_one_valid_document(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact, monkeypatch: Any
) -> None:
    # Small blocks, so eight sources take several blocks (the streamed path).
    monkeypatch.setattr("shared.models.scoring.BLOCK_BUDGET_BYTES", 3 * 500 * 4)
    resp = client.get(URL, query_string={"model_id": "m", "max_recommendations": 2},
                      headers=auth)
    assert resp.is_streamed
    rows = recs(resp)
    assert sorted({r["source_id"] for r in rows}) == [f"u{i}" for i in range(8)]
    assert targets(rows, "u1") == brute(model, 1, 2, True)
    csv_resp = client.get(URL, query_string={"model_id": "m", "output_format": "csv"},
                          headers=auth)
    lines = csv_resp.get_data(as_text=True).splitlines()
    assert lines[0] == "source_id,target_id,rank,score" and len(lines) == 1 + 8 * 10


def test_unseen_source_gets_popular_items_marked_fallback(
    client: FlaskClient, auth: dict[str, str], fake_redis: fakeredis.FakeRedis, storage: Storage
) -> None:
    art = make_artifact(n_targets=50)  # no metadata features
    register(fake_redis, storage, "acme", "plain", art)
    rows = recs(client.get(URL, query_string={"model_id": "plain", "source_id": "stranger",
                                              "max_recommendations": 5}, headers=auth))
    popular = np.argsort(-art.target_popularity, kind="stable")[:5]
    assert targets(rows, "stranger") == [f"i{c}" for c in popular]
    assert all(r["fallback"] for r in rows)
    np.testing.assert_allclose([r["score"] for r in rows], art.target_popularity[popular],
                               rtol=1e-6)


def test_cold_start_from_request_metadata_differs_by_metadata(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact
) -> None:
    def ask(metadata: dict[str, Any]) -> list[dict[str, Any]]:
        return recs(client.post(URL, json={"model_id": "m", "source_id": "newbie",
                                           "source_metadata": metadata}, headers=auth))

    fr, de = ask({"country": "fr"}), ask({"country": "de", "plan": "pro"})
    assert all(r["fallback"] for r in fr + de)
    assert targets(fr, "newbie") != targets(de, "newbie")
    # Metadata the model never learned: most popular.
    unknown = ask({"country": "xx"})
    popular = np.argsort(-model.target_popularity, kind="stable")[:10]
    assert targets(unknown, "newbie") == [f"i{c}" for c in popular]
    # A known source keeps its own history even when metadata is sent.
    known = recs(client.post(URL, json={"model_id": "m", "source_id": "u0",
                                        "source_metadata": {"country": "de"}}, headers=auth))
    assert targets(known, "u0") == brute(model, 0, 10, True)
    assert not any(r["fallback"] for r in known)


def test_cold_start_reads_the_newest_uploaded_entity_record(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact, monkeypatch: Any
) -> None:
    records = {"fr-user": {"id": "fr-user", "type": "user", "metadata": {"country": "fr"}},
               "de-user": {"id": "de-user", "type": "user", "metadata": {"country": "de"}},
               "an-item": {"id": "an-item", "type": "item", "metadata": {"country": "fr"}}}
    monkeypatch.setattr("shared.data.selection.latest_entity",
                        lambda storage, r, tenant, entity_id: records.get(entity_id))
    rows = recs(client.get(URL, query_string={"model_id": "m",
                                              "source_id": "fr-user,de-user,an-item"},
                           headers=auth))
    fr, de, item = (targets(rows, s) for s in ("fr-user", "de-user", "an-item"))
    assert fr != de
    same_metadata = recs(client.post(URL, json={"model_id": "m", "source_id": "x",
                                                "source_metadata": {"country": "fr"}},
                                     headers=auth))
    assert fr == targets(same_metadata, "x")
    assert all(r["fallback"] for r in rows)
    popular = np.argsort(-model.target_popularity, kind="stable")[:10]
    assert item == [f"i{c}" for c in popular]  # an entity of another type is not a user


def test_hot_swap_serves_a_retrained_version_without_restart(
    client: FlaskClient, auth: dict[str, str], fake_redis: fakeredis.FakeRedis, storage: Storage
) -> None:
    first = make_artifact(n_targets=300, seed=10)
    register(fake_redis, storage, "acme", "swap", first)
    query = {"model_id": "swap", "source_id": "u0"}
    before = client.get(URL, query_string=query, headers=auth)
    assert orjson.loads(before.get_data())["version"] == 1
    second = make_artifact(n_targets=300, seed=11)
    register(fake_redis, storage, "acme", "swap", second)
    after = client.get(URL, query_string=query, headers=auth)
    assert orjson.loads(after.get_data())["version"] == 2
    assert targets(recs(after), "u0") == brute(second, 0, 10, True)
    assert targets(recs(before), "u0") != targets(recs(after), "u0")


def test_tenants_cannot_read_each_others_models(
    client: FlaskClient, fake_redis: fakeredis.FakeRedis, model: ModelArtifact
) -> None:
    raw, _ = create_key(fake_redis, "globex", ["recommend"])
    resp = client.get(URL, query_string={"model_id": "m", "source_id": "u0"},
                      headers={"apikey": raw})
    assert resp.status_code == 404
    assert resp.get_json()["error"]["code"] == "model_not_found"


def test_needs_a_key_with_the_recommend_scope(
    client: FlaskClient, fake_redis: fakeredis.FakeRedis, model: ModelArtifact
) -> None:
    assert client.get(URL, query_string={"model_id": "m"}).status_code == 401
    raw, _ = create_key(fake_redis, "acme", ["data:read"])
    resp = client.get(URL, query_string={"model_id": "m"}, headers={"apikey": raw})
    assert resp.status_code == 403


def test_unknown_model_404_and_first_training_409(
    client: FlaskClient, auth: dict[str, str], fake_redis: fakeredis.FakeRedis
) -> None:
    resp = client.get(URL, query_string={"model_id": "ghost"}, headers=auth)
    assert resp.status_code == 404
    create_run(fake_redis, "acme", "fresh", {}, None)
    resp = client.get(URL, query_string={"model_id": "fresh", "source_id": "a"}, headers=auth)
    assert resp.status_code == 409
    error = resp.get_json()["error"]
    assert error["code"] == "model_not_ready"
    assert error["details"]["status"] == "running" and error["details"]["model_id"] == "fresh"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"max_recommendations": 0}, "max_recommendations"),
        ({"max_recommendations": 1001}, "max_recommendations"),
        ({"max_recommendations": "ten"}, "max_recommendations"),
        ({"output_format": "xml"}, "output_format"),
        ({"exclude_seen": "maybe"}, "exclude_seen"),
        ({"model_id": "bad id!"}, "model_id"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_parameters_are_422(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact,
    query: dict[str, Any], field: str,
) -> None:
    resp = client.get(URL, query_string={"model_id": "m", "source_id": "u0", **query},
                      headers=auth)
    assert resp.status_code == 422
    assert field in resp.get_json()["error"]["details"]["fields"]


def test_types_other_than_the_models_are_422(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact
) -> None:
    ok = client.get(URL, query_string={"model_id": "m", "source_id": "u0", "source_type": "user",
                                       "target_type": "item"}, headers=auth)
    assert ok.status_code == 200
    for name in ("source_type", "target_type"):
        resp = client.get(URL, query_string={"model_id": "m", name: "banana"}, headers=auth)
        assert resp.status_code == 422
        assert resp.get_json()["error"]["code"] == f"unknown_{name}"


def test_post_body_errors(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact
) -> None:
    assert client.post(URL, json={"source_id": "u0"}, headers=auth).status_code == 422
    assert client.post(URL, json={"model_id": "m", "source_id": []},
                       headers=auth).status_code == 422
    assert client.post(URL, json={"model_id": "m", "source_id": ["u1", ""]},
                       headers=auth).status_code == 422
    assert client.post(URL, json={"model_id": "m", "source_id": [1, 2]},
                       headers=auth).status_code == 422
    resp = client.post(URL, json={"model_id": "m", "source_metadata": {"a": "b"}}, headers=auth)
    assert resp.status_code == 422
    assert client.post(URL, data="model_id=m", headers=auth).status_code == 415
    assert client.post(URL, data=b"{", headers=auth,
                       content_type="application/json").status_code == 400
    deep = b"[" * 5000 + b"]" * 5000
    assert client.post(URL, data=deep, headers=auth,
                       content_type="application/json").status_code in {400, 422}
    empty = client.get(URL, query_string={"model_id": "m", "source_id": ","}, headers=auth)
    assert empty.status_code == 422
    for bad in ({"model_id": "m", "source_id": "a\x00"}, {"model_id": "m",
                                                             "max_recommendations": 1.5}):
        assert client.post(URL, json=bad, headers=auth).status_code == 422
    long_id = client.post(URL, json={"model_id": "m", "source_id": ["u1", "x" * 5000]},
                          headers=auth)
    assert long_id.status_code == 422
    assert long_id.get_json()["error"]["code"] == "source_id_too_long"


def test_max_recommendations_above_the_catalogue_returns_everything_unseen(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact
) -> None:
    rows = recs(client.get(URL, query_string={"model_id": "m", "source_id": "u1",
                                              "max_recommendations": 1000}, headers=auth))
    assert len(rows) == 500 - 100
    assert [r["rank"] for r in rows] == list(range(1, 401))


def test_openapi_documents_the_endpoint(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    path = spec["paths"]["/v1/recommender/recommended_items"]
    assert {"get", "post"} <= set(path)
    names = {p["name"] for p in path["get"]["parameters"]}
    assert {"model_id", "source_id", "max_recommendations", "output_format"} <= names


def _limit(app: Flask, **changes: Any) -> None:
    svc = app.extensions["recsys"]
    app.extensions["recsys"] = dataclasses.replace(
        svc, settings=dataclasses.replace(svc.settings, **changes))


def test_too_many_source_ids_is_422(
    app: Flask, client: FlaskClient, auth: dict[str, str], model: ModelArtifact
) -> None:
    _limit(app, max_recommend_source_ids=3)
    ok = client.post(URL, json={"model_id": "m", "source_id": ["u0", "u1", "u1", "u2"]},
                     headers=auth)
    assert ok.status_code == 200  # duplicates count once
    resp = client.post(URL, json={"model_id": "m", "source_id": ["u0", "u1", "u2", "u3"]},
                       headers=auth)
    assert resp.status_code == 422
    assert resp.get_json()["error"]["code"] == "too_many_source_ids"


def test_uploaded_metadata_lookups_are_capped_per_request(
    app: Flask, client: FlaskClient, auth: dict[str, str], model: ModelArtifact,
    monkeypatch: Any,
) -> None:
    _limit(app, max_cold_start_lookups=2)
    calls: list[str] = []

    def latest(storage: Any, r: Any, tenant: str, entity_id: str) -> dict[str, Any]:
        calls.append(entity_id)
        return {"id": entity_id, "type": "user", "metadata": {"country": "de"}}

    monkeypatch.setattr("shared.data.selection.latest_entity", latest)
    rows = recs(client.get(URL, query_string={"model_id": "m", "source_id": "a,b,c"},
                           headers=auth))
    assert calls == ["a", "b"]
    popular = [f"i{c}" for c in np.argsort(-model.target_popularity, kind="stable")[:10]]
    assert targets(rows, "a") == targets(rows, "b") != popular
    assert targets(rows, "c") == popular
    assert all(r["fallback"] for r in rows)


def test_an_unreadable_entity_record_falls_back_to_popularity(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact, monkeypatch: Any
) -> None:
    def broken(storage: Any, r: Any, tenant: str, entity_id: str) -> dict[str, Any]:
        raise ValueError("corrupt parquet")

    monkeypatch.setattr("shared.data.selection.latest_entity", broken)
    rows = recs(client.get(URL, query_string={"model_id": "m", "source_id": "newbie"},
                           headers=auth))
    popular = [f"i{c}" for c in np.argsort(-model.target_popularity, kind="stable")[:10]]
    assert targets(rows, "newbie") == popular

    def down(storage: Any, r: Any, tenant: str, entity_id: str) -> dict[str, Any]:
        raise OSError("connection refused")

    monkeypatch.setattr("shared.data.selection.latest_entity", down)
    resp = client.get(URL, query_string={"model_id": "m", "source_id": "newbie"}, headers=auth)
    assert resp.status_code == 503
    assert resp.get_json()["error"]["details"]["dependency"] == "storage"
