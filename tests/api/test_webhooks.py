"""GET /webhook_secret and POST /webhook_secret/rotate."""

from __future__ import annotations

import base64

import fakeredis
from flask.testing import FlaskClient
from standardwebhooks import Webhook

from shared.keys import create_key

BASE = "/v1/recommender"


def test_secret_is_created_once_and_usable_by_standard_webhooks(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    first = client.get(f"{BASE}/webhook_secret", headers=auth)
    second = client.get(f"{BASE}/webhook_secret", headers=auth)

    assert first.status_code == 200
    assert first.headers["Cache-Control"] == "no-store"
    secret = first.get_json()["secret"]
    assert secret == second.get_json()["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    Webhook(secret)  # the reference library accepts it


def test_rotate_returns_a_new_secret_that_get_then_returns(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    old = client.get(f"{BASE}/webhook_secret", headers=auth).get_json()["secret"]

    rotated = client.post(f"{BASE}/webhook_secret/rotate", headers=auth)

    assert rotated.status_code == 200
    new = rotated.get_json()["secret"]
    assert new != old and new.startswith("whsec_")
    assert client.get(f"{BASE}/webhook_secret", headers=auth).get_json()["secret"] == new


def test_tenants_have_separate_secrets(
    client: FlaskClient, auth: dict[str, str], fake_redis: fakeredis.FakeRedis
) -> None:
    other, _ = create_key(fake_redis, "globex", ["admin"])

    mine = client.get(f"{BASE}/webhook_secret", headers=auth).get_json()["secret"]
    theirs = client.get(f"{BASE}/webhook_secret", headers={"apikey": other}).get_json()["secret"]
    client.post(f"{BASE}/webhook_secret/rotate", headers={"apikey": other})

    assert mine != theirs
    assert client.get(f"{BASE}/webhook_secret", headers=auth).get_json()["secret"] == mine


def test_admin_scope_is_required(client: FlaskClient, fake_redis: fakeredis.FakeRedis) -> None:
    key, _ = create_key(fake_redis, "acme", ["train", "data:read"])

    for method, path in (("get", "/webhook_secret"), ("post", "/webhook_secret/rotate")):
        response = getattr(client, method)(f"{BASE}{path}", headers={"apikey": key})
        assert response.status_code == 403
        assert response.get_json()["error"]["code"] == "missing_scope"
        assert getattr(client, method)(f"{BASE}{path}").status_code == 401


def test_wrong_method_is_405_in_contract_format(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    response = client.get(f"{BASE}/webhook_secret/rotate", headers=auth)

    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_documented_in_openapi(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").get_json()["paths"]

    assert "get" in paths[f"{BASE}/webhook_secret"]
    assert "post" in paths[f"{BASE}/webhook_secret/rotate"]
