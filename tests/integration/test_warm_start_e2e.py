"""A warm start through the real prefork worker: new users, known from the new batch only,
get personalised (not fallback) recommendations, and the status names the parent."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.helpers.stack import Stack
from tests.integration.test_recommendations_e2e import train

pytestmark = pytest.mark.integration


def _group(user: int) -> int:
    return 0 if user % 2 == 0 else 10


def _batch(users: list[str], tag: str) -> dict[str, Any]:
    """Even users buy items 0-9, odd users items 10-19 (no metadata: history only)."""
    interactions = [
        {"type": "purchase", "source_id": name, "target_id": f"i{_group(n) + (n + j * 3) % 10}"}
        for n, name in ((int(u.lstrip("un")), u) for u in users) for j in range(6)
    ]
    return {"interactions": interactions, "tags": [tag]}


def _upload(stack: Stack, http: requests.Session, body: dict[str, Any]) -> None:
    response = http.post(stack.url("/data_batch"), json=body, headers=stack.headers(),
                         timeout=60)
    assert response.status_code == 201, response.text


def test_new_users_get_personalised_recommendations_after_a_warm_start(
    stack: Stack, http: requests.Session
) -> None:
    # Given version 1 trained on users u0..u39
    _upload(stack, http, _batch([f"u{u}" for u in range(40)], "warm"))
    body = {"model_id": "warm", "data_tags": ["warm"], "use_metadata_features": False,
            "hyperparameters": {"epochs": 20, "no_components": 8}}
    first = train(stack, http, body)
    assert first["version"] == 1 and "parent_version" not in first["training"]

    # and a new batch with users n0..n9 the model never saw
    _upload(stack, http, _batch([f"n{u}" for u in range(10)], "warm"))
    ask = {"model_id": "warm", "source_id": "n0", "max_recommendations": 5}
    before = http.get(stack.url("/recommended_items"), params=ask, headers=stack.headers(),
                      timeout=30).json()
    assert all(row["fallback"] for row in before["recommendations"])

    # When a warm start continues version 1 for a few epochs (size and loss are the parent's)
    warm = train(stack, http, {**body, "warm_start": True,
                               "hyperparameters": {"epochs": 5}})

    # Then the status names its parent, and the new users are scored from their history
    assert warm["version"] == 2 and warm["training"]["parent_version"] == 1
    for user in range(10):
        # (seen items included: a user's 4 unseen group items alone leave the tiny model's
        # top 3 no margin, while its whole group must outrank the other group's items)
        got = http.get(stack.url("/recommended_items"), headers=stack.headers(), timeout=30,
                       params={**ask, "source_id": f"n{user}", "exclude_seen": "false"}).json()
        assert got["version"] == 2
        rows = got["recommendations"]
        assert rows and not any(row["fallback"] for row in rows)
        group = _group(user)
        assert all(group <= int(row["target_id"][1:]) < group + 10 for row in rows[:3]), rows

    # And the model lists both versions with their metrics side by side
    model = http.get(stack.url("/models/warm"), headers=stack.headers(), timeout=10).json()
    kept = {v["version"]: v for v in model["kept_versions"]}
    assert set(kept) == {1, 2} and kept[2]["parent_version"] == 1
    assert kept[1]["metrics"] is not None and kept[2]["metrics"] is not None
