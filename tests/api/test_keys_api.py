"""Keys over HTTP: an admin key creates, lists and revokes its own tenant's keys only."""

from __future__ import annotations

import fakeredis
from flask.testing import FlaskClient

from shared.keys import create_key, lookup

KEYS = "/v1/recommender/keys"


def test_admin_creates_lists_and_revokes_keys(
    client: FlaskClient, auth: dict[str, str], fake_redis: fakeredis.FakeRedis
) -> None:
    # when an admin key of "acme" creates a recommend-only key
    created = client.post(KEYS, json={"scopes": ["recommend"], "name": "web"}, headers=auth)
    # then the raw key is shown once, not cached, and works with exactly that scope
    assert created.status_code == 201
    body = created.get_json()
    assert body["tenant"] == "acme" and body["scopes"] == ["recommend"] and body["name"] == "web"
    assert created.headers["Cache-Control"] == "no-store"
    record = lookup(fake_redis, body["key"])
    assert record is not None and record.key_id == body["key_id"]
    # and the listing shows it without the raw key
    listed = client.get(KEYS, headers=auth)
    assert listed.status_code == 200
    assert body["key_id"] in {k["key_id"] for k in listed.get_json()}
    assert body["key"] not in listed.get_data(as_text=True)
    # and revoking it makes it fail authentication
    assert client.delete(f"{KEYS}/{body['key_id']}", headers=auth).status_code == 200
    assert client.get(KEYS, headers={"apikey": body["key"]}).status_code == 401
    assert client.delete(f"{KEYS}/{body['key_id']}", headers=auth).status_code == 404


def test_other_tenants_keys_are_invisible(
    client: FlaskClient, auth: dict[str, str], fake_redis: fakeredis.FakeRedis
) -> None:
    _, other = create_key(fake_redis, "globex", ["admin"])
    listed = client.get(KEYS, headers=auth).get_json()
    assert other.key_id not in {k["key_id"] for k in listed}
    gone = client.delete(f"{KEYS}/{other.key_id}", headers=auth)
    assert gone.status_code == 404 and gone.get_json()["error"]["code"] == "key_not_found"


def test_keys_need_admin_and_valid_scopes(
    client: FlaskClient, auth: dict[str, str], fake_redis: fakeredis.FakeRedis
) -> None:
    raw, _ = create_key(fake_redis, "acme", ["data:read"])
    denied = client.get(KEYS, headers={"apikey": raw})
    assert denied.status_code == 403 and denied.get_json()["error"]["code"] == "missing_scope"
    bad = client.post(KEYS, json={"scopes": ["root"]}, headers=auth)
    assert bad.status_code == 422 and "error" in bad.get_json()
    empty = client.post(KEYS, json={"scopes": []}, headers=auth)
    assert empty.status_code == 422
    extra = client.post(KEYS, json={"scopes": ["admin"], "tenant": "globex"}, headers=auth)
    assert extra.status_code == 422
