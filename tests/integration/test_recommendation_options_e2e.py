"""Train through the real prefork worker, then shape answers over HTTP: request-time filters,
include_ids, exclusions, explanations, entity fields, bulk streaming and similar items."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
import requests

from tests.helpers.stack import Stack
from tests.integration.test_recommendations_e2e import has_training, rows, shop, train

pytestmark = pytest.mark.integration
__all__ = ["has_training"]


def get(stack: Stack, http: requests.Session, path: str, **params: Any) -> requests.Response:
    return http.get(stack.url(path), params=params, headers=stack.headers(), timeout=30)


def test_train_then_shape_recommendations_and_similar_items(
    stack: Stack, http: requests.Session, has_training: None
) -> None:
    # Given a shop (fr users buy shelf a, de users shelf b) and a model trained on it
    up = http.post(stack.url("/data_batch"), json=shop("opts-e2e"), headers=stack.headers(),
                   timeout=30)
    assert up.status_code == 201, up.text
    train(stack, http, {"model_id": "opts-e2e", "data_tags": ["opts-e2e"],
                        "evaluation": {"holdout": 0},
                        "hyperparameters": {"epochs": 30, "no_components": 8,
                                            "random_state": 7}})

    # When a fr user asks only for shelf-b items: 5 rows, all from shelf b
    shelf_b = '[{"field": "metadata.shelf", "op": "eq", "value": "b"}]'
    got = rows(get(stack, http, "/recommended_items", model_id="opts-e2e", source_id="u1",
                   filters=shelf_b, max_recommendations=5, with_entities="true"))
    assert len(got) == 5
    assert all(10 <= int(r["target_id"][1:]) < 20 for r in got)
    assert all(r["name"] == f"Item {r['target_id'][1:]}" for r in got)

    # A filter passing fewer targets than k gives only those
    few = '[{"field": "id", "op": "in", "value": ["i11", "i12"]}]'
    assert {r["target_id"] for r in rows(get(
        stack, http, "/recommended_items", model_id="opts-e2e", source_id="u30",
        filters=few, exclude_seen="false"))} == {"i11", "i12"}

    # include_ids reranks a candidate list; unknown ids are reported; exclusions hold
    resp = get(stack, http, "/recommended_items", model_id="opts-e2e", source_id="u1",
               include_ids="i0,i12,ghost,i0,i15", exclude_ids="i15", explain="true",
               exclude_seen="false")
    assert resp.status_code == 200, resp.text
    assert resp.json()["unknown_ids"] == ["ghost"]
    ranked = resp.json()["recommendations"]
    assert [r["target_id"] for r in ranked][:1] == ["i0"]  # a fr user prefers shelf a
    assert {r["target_id"] for r in ranked} == {"i0", "i12"}
    history = {f"i{(1 + j * 3) % 10}" for j in range(6)}
    assert all(r["because"] and set(r["because"]) <= history for r in ranked)

    # Every source, streamed, with the filter applied to each
    text = get(stack, http, "/recommended_items", model_id="opts-e2e", filters=shelf_b,
               output_format="csv", max_recommendations=3).text
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == ["source_id", "target_id", "rank", "score"]
    assert len(table) == 1 + 40 * 3
    assert all(10 <= int(row[1][1:]) < 20 for row in table[1:])

    # Similar items: shelf-a items are most like shelf-a items, never themselves
    similar = get(stack, http, "/similar_items", model_id="opts-e2e", target_id="i2,i13",
                  max_recommendations=5)
    assert similar.status_code == 200, similar.text
    items = similar.json()["similar_items"]
    for target, shelf in (("i2", range(10)), ("i13", range(10, 20))):
        mine = [r["similar_id"] for r in items if r["target_id"] == target]
        assert len(mine) == 5 and target not in mine
        assert sum(int(s[1:]) in shelf for s in mine) >= 4
    csv_text = get(stack, http, "/similar_items", model_id="opts-e2e", target_id="i2",
                   output_format="csv", exclude_ids="i0").text
    lines = list(csv.reader(io.StringIO(csv_text)))
    assert lines[0] == ["target_id", "similar_id", "rank", "score"]
    assert len(lines) == 11 and "i0" not in {row[1] for row in lines[1:]}
