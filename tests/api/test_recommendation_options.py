"""Request-time options of /recommended_items and /similar_items through the Flask test client."""

from __future__ import annotations

import csv
import io
from typing import Any

import fakeredis
import numpy as np
import orjson
import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.models.artifact import ModelArtifact
from shared.storage import Storage
from tests.helpers.models import brute_shaped, make_artifact, register, taste_model

RECS = "/v1/recommender/recommended_items"
SIMILAR = "/v1/recommender/similar_items"
BATCH = "/v1/recommender/data_batch"


@pytest.fixture
def storage(app: Flask) -> Storage:
    store: Storage = app.extensions["recsys"].storage
    return store


@pytest.fixture
def model(fake_redis: fakeredis.FakeRedis, storage: Storage, client: FlaskClient,
          auth: dict[str, str]) -> ModelArtifact:
    """Model "m": 8 users, 200 items; items carry a colour and a price; i0-i9 have names."""
    art = make_artifact(n_sources=8, n_targets=200, seen={0: [1, 2, 3]})
    register(fake_redis, storage, "acme", "m", art)
    items = [{"id": f"i{i}", "type": "item", "name": f"Item {i}" if i < 10 else "",
              "media_url": f"https://img.example/{i}.jpg" if i < 10 else "",
              "metadata": {"color": "red" if i % 4 == 0 else "blue", "price": i}}
             for i in range(200)]
    resp = client.post(BATCH, json={"entities": items}, headers=auth)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return art


def body(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    out: dict[str, Any] = orjson.loads(resp.get_data())
    return out


def error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    err: dict[str, Any] = orjson.loads(resp.get_data())["error"]
    return err


RED = [{"field": "metadata.color", "op": "eq", "value": "red"}]


def test_filters_in_get_and_post_keep_only_passing_targets(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact
) -> None:
    got = body(client.get(RECS, query_string={"model_id": "m", "source_id": "u0",
                                              "filters": orjson.dumps(RED).decode()},
                          headers=auth))["recommendations"]
    posted = body(client.post(RECS, json={"model_id": "m", "source_id": "u0", "filters": RED},
                              headers=auth))["recommendations"]
    assert got == posted
    expected = brute_shaped(model, 0, np.arange(200) % 4 == 0, 10)
    assert [r["target_id"] for r in got] == expected
    assert [r["rank"] for r in got] == list(range(1, 11))


def test_a_record_uploaded_after_the_first_request_is_seen_by_the_next(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact
) -> None:
    cheap = [{"field": "metadata.price", "op": "lt", "value": 3}]
    first = body(client.post(RECS, json={"model_id": "m", "source_id": "u1", "filters": cheap},
                             headers=auth))["recommendations"]
    assert {r["target_id"] for r in first} == {"i0", "i1", "i2"}
    # When item 150 is re-uploaded with a lower price
    client.post(BATCH, json={"entities": [{"id": "i150", "type": "item",
                                           "metadata": {"price": 1}}]}, headers=auth)
    again = body(client.post(RECS, json={"model_id": "m", "source_id": "u1", "filters": cheap},
                             headers=auth))["recommendations"]
    assert {r["target_id"] for r in again} == {"i0", "i1", "i2", "i150"}


@pytest.mark.parametrize(("params", "code"), [
    ({"filters": "[{"}, "invalid_filters"),
    ({"filters": '[{"field": "timestamp", "op": "gt", "value": 1}]'}, "invalid_filters"),
    ({"filters": '[{"field": "metadata.x", "op": "like", "value": 1}]'}, "invalid_filters"),
    ({"filters": '{"field": "id"}'}, "invalid_filters"),
    ({"new_targets": "maybe"}, None),
    ({"explain": "perhaps"}, None),
    ({"include_ids": ","}, "empty_include_ids"),
    ({"new_targets": "include"}, "no_target_features"),
])
def test_bad_options_are_json_422(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact,
    params: dict[str, str], code: str | None,
) -> None:
    resp = client.get(RECS, query_string={"model_id": "m", "source_id": "u0", **params},
                      headers=auth)
    err = error(resp, 422)
    assert err["message"]
    if code is not None:
        assert err["code"] == code


def test_bad_options_in_post_are_json_422(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact
) -> None:
    for extra in ({"filters": "red"}, {"include_ids": [1, 2]}, {"exclude_ids": {"a": 1}},
                  {"include_ids": ["x" * 2000]}, {"filters": [{"field": "id", "op": "eq"}]}):
        resp = client.post(RECS, json={"model_id": "m", "source_id": "u0", **extra},
                           headers=auth)
        error(resp, 422)


def test_include_ids_rerank_candidates_and_report_unknown_ones(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact
) -> None:
    resp = client.get(RECS, query_string={"model_id": "m", "source_id": ["u0", "u5"],
                                          "include_ids": "i5,i9,nope,i9,i1",
                                          "exclude_ids": "i9"}, headers=auth)
    out = body(resp)
    assert out["unknown_ids"] == ["nope"]
    allowed = np.isin(np.arange(200), [5, 1])
    for source, row in (("u0", 0), ("u5", 5)):
        got = [r["target_id"] for r in out["recommendations"] if r["source_id"] == source]
        assert got == brute_shaped(model, row, allowed, 10)
    # u0 already bought i1, so it only gets i5
    assert [r["target_id"] for r in out["recommendations"] if r["source_id"] == "u0"] == ["i5"]


def test_with_entities_and_explain_decorate_rows_in_json_and_csv(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact
) -> None:
    params = {"model_id": "m", "source_id": "u0", "include_ids": "i4,i8,i120",
              "with_entities": "true", "explain": "true"}
    rows = body(client.get(RECS, query_string=params, headers=auth))["recommendations"]
    by_id = {r["target_id"]: r for r in rows}
    assert by_id["i4"]["name"] == "Item 4"
    assert by_id["i4"]["media_url"] == "https://img.example/4.jpg"
    assert all(set(r["because"]) <= {"i1", "i2", "i3"} and len(r["because"]) == 3
               for r in rows)
    text = client.get(RECS, query_string={**params, "output_format": "csv"},
                      headers=auth).get_data(as_text=True)
    table = list(csv.DictReader(io.StringIO(text)))
    assert list(table[0]) == ["source_id", "target_id", "rank", "score", "because", "name",
                              "media_url"]
    assert [r["target_id"] for r in table] == [r["target_id"] for r in rows]
    assert table[0]["because"] == ";".join(rows[0]["because"])


def test_new_targets_are_flagged(
    client: FlaskClient, auth: dict[str, str], fake_redis: fakeredis.FakeRedis,
    storage: Storage,
) -> None:
    register(fake_redis, storage, "acme", "taste", taste_model())
    client.post(BATCH, json={"entities": [{"id": "new-jazz", "type": "item",
                                           "metadata": {"genre": "jazz"}}]}, headers=auth)
    rows = body(client.post(RECS, json={"model_id": "taste", "source_id": "u1",
                                        "new_targets": "include", "max_recommendations": 3},
                            headers=auth))["recommendations"]
    assert rows[0]["target_id"] == "new-jazz" and rows[0]["new_target"] is True
    assert all(r["new_target"] is False for r in rows[1:])


def test_similar_items_json_and_csv(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact
) -> None:
    out = body(client.get(SIMILAR, query_string={"model_id": "m", "target_id": "i3,i10",
                                                 "max_recommendations": 5}, headers=auth))
    rows = out["similar_items"]
    emb = model.target_repr[:, :-2].astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    for target, col in (("i3", 3), ("i10", 10)):
        sims = emb @ emb[col]
        sims[col] = -np.inf  # never itself
        expected = [f"i{c}" for c in np.argsort(-sims, kind="stable")[:5]]
        got = [r for r in rows if r["target_id"] == target]
        assert [r["similar_id"] for r in got] == expected
        assert all(r["fallback"] is False for r in got)
        assert got[0]["score"] == pytest.approx(sims[int(expected[0][1:])], abs=1e-5)
    text = client.get(SIMILAR, query_string={"model_id": "m", "target_id": "i3",
                                             "output_format": "csv", "filters":
                                             orjson.dumps(RED).decode()},
                      headers=auth).get_data(as_text=True)
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == ["target_id", "similar_id", "rank", "score"]
    assert len(lines) == 11
    assert all(int(s[1:]) % 4 == 0 and s != "i3" for _, s, _, _ in lines[1:])


def test_similar_items_of_an_unseen_target(
    client: FlaskClient, auth: dict[str, str], fake_redis: fakeredis.FakeRedis,
    storage: Storage, model: ModelArtifact,
) -> None:
    register(fake_redis, storage, "acme", "taste", taste_model())
    rows = body(client.post(SIMILAR, json={"model_id": "taste", "target_id": "new",
                                           "target_metadata": {"genre": "rock"},
                                           "max_recommendations": 4},
                            headers=auth))["similar_items"]
    assert all(r["fallback"] and int(r["similar_id"][1:]) >= 10 for r in rows)
    # Without usable metadata, the most popular targets, still flagged
    rows = body(client.get(SIMILAR, query_string={"model_id": "m", "target_id": "stranger"},
                           headers=auth))["similar_items"]
    assert len(rows) == 10 and all(r["fallback"] for r in rows)


def test_similar_items_errors(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact
) -> None:
    assert error(client.get(SIMILAR, query_string={"model_id": "nope", "target_id": "i1"},
                            headers=auth), 404)["code"] == "model_not_found"
    error(client.get(SIMILAR, query_string={"model_id": "m"}, headers=auth), 422)
    error(client.get(SIMILAR, query_string={"model_id": "m", "target_id": "i1",
                                            "filters": "nope"}, headers=auth), 422)
    error(client.post(SIMILAR, json={"model_id": "m", "target_id": []}, headers=auth), 422)
    assert client.get(SIMILAR, query_string={"model_id": "m", "target_id": "i1"}).status_code \
        == 401


def test_shaped_answers_stream_in_blocks_like_whole_ones(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params = {"model_id": "m", "filters": orjson.dumps(RED).decode(), "explain": "true",
              "with_entities": "true", "max_recommendations": 4}
    whole = body(client.get(RECS, query_string=params, headers=auth))["recommendations"]
    # When every block holds 3 sources (the 50 passing targets of 200 are scored)
    monkeypatch.setattr("shared.models.scoring.BLOCK_BUDGET_BYTES", 3 * 50 * 4)
    resp = client.get(RECS, query_string=params, headers=auth)
    assert resp.is_streamed
    assert body(resp)["recommendations"] == whole
    assert {r["source_id"] for r in whole} == {f"u{i}" for i in range(8)}
    assert all(int(r["target_id"][1:]) % 4 == 0 for r in whole)


def test_a_stranger_gets_the_most_popular_passing_targets(
    client: FlaskClient, auth: dict[str, str], model: ModelArtifact
) -> None:
    rows = body(client.post(RECS, json={"model_id": "m", "source_id": "nobody",
                                        "filters": RED, "explain": True},
                            headers=auth))["recommendations"]
    popular = [f"i{c}" for c in np.argsort(-model.target_popularity, kind="stable")
               if c % 4 == 0][:10]
    assert [r["target_id"] for r in rows] == popular
    assert all(r["fallback"] and r["because"] == [] for r in rows)
