"""Every error is JSON in the contract's format; keys and scopes guard the API."""

from __future__ import annotations

import fakeredis
import pytest
from flask import Flask, request
from flask.testing import FlaskClient

from api.auth import current_tenant, require
from api.parsing import load_json_body
from shared.keys import create_key


def _assert_error(body: object, code: str) -> None:
    assert isinstance(body, dict)
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)


@pytest.fixture
def guarded(app: Flask) -> Flask:
    """The app with one admin-only route that echoes the parsed body and tenant."""

    @require("admin")
    def echo() -> dict[str, object]:
        return {"tenant": current_tenant(), "body": load_json_body(request)}

    app.add_url_rule("/v1/recommender/_echo", "echo", echo, methods=["POST"])
    return app


def test_health_needs_no_key(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_unknown_path_is_json_404(client: FlaskClient) -> None:
    response = client.get("/v1/recommender/nothing-here")
    assert response.status_code == 404
    _assert_error(response.json, "not_found")


def test_wrong_method_is_json_405_with_allow(client: FlaskClient) -> None:
    response = client.delete("/healthz")
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]
    _assert_error(response.json, "method_not_allowed")


def test_missing_key_is_json_401(guarded: Flask) -> None:
    response = guarded.test_client().post("/v1/recommender/_echo", json={})
    assert response.status_code == 401
    _assert_error(response.json, "missing_api_key")


def test_wrong_key_is_json_401(guarded: Flask) -> None:
    response = guarded.test_client().post(
        "/v1/recommender/_echo", json={}, headers={"apikey": "rk_wrong"}
    )
    assert response.status_code == 401
    _assert_error(response.json, "invalid_api_key")


def test_key_without_scope_is_json_403(guarded: Flask, fake_redis: fakeredis.FakeRedis) -> None:
    raw, _ = create_key(fake_redis, "shop", ["data:read"])
    response = guarded.test_client().post("/v1/recommender/_echo", json={}, headers={"apikey": raw})
    assert response.status_code == 403
    _assert_error(response.json, "missing_scope")
    assert response.json["error"]["details"]["required_scope"] == "admin"


def test_key_names_the_tenant(guarded: Flask, auth: dict[str, str]) -> None:
    response = guarded.test_client().post("/v1/recommender/_echo", json={"a": 1}, headers=auth)
    assert response.status_code == 200
    assert response.json == {"tenant": "acme", "body": {"a": 1}}


def test_deeply_nested_json_is_400_not_500(guarded: Flask, auth: dict[str, str]) -> None:
    body = "[" * 100_000 + "]" * 100_000
    response = guarded.test_client().post(
        "/v1/recommender/_echo", data=body, content_type="application/json", headers=auth
    )
    assert response.status_code == 400
    _assert_error(response.json, "invalid_json")
    moderately = "[" * 200 + "]" * 200
    response = guarded.test_client().post(
        "/v1/recommender/_echo", data=moderately, content_type="application/json", headers=auth
    )
    assert response.status_code == 400
    _assert_error(response.json, "json_too_deep")


def test_malformed_json_is_400(guarded: Flask, auth: dict[str, str]) -> None:
    response = guarded.test_client().post(
        "/v1/recommender/_echo", data="{nope", content_type="application/json", headers=auth
    )
    assert response.status_code == 400
    _assert_error(response.json, "invalid_json")


def test_wrong_content_type_is_415(guarded: Flask, auth: dict[str, str]) -> None:
    response = guarded.test_client().post(
        "/v1/recommender/_echo", data="a=1", content_type="text/plain", headers=auth
    )
    assert response.status_code == 415
    _assert_error(response.json, "unsupported_media_type")


def test_oversized_body_is_json_413(guarded: Flask, auth: dict[str, str]) -> None:
    guarded.config["MAX_CONTENT_LENGTH"] = 1024
    response = guarded.test_client().post(
        "/v1/recommender/_echo",
        data=b'{"a": "' + b"x" * 4096 + b'"}',
        content_type="application/json",
        headers=auth,
    )
    assert response.status_code == 413
    _assert_error(response.json, "payload_too_large")


def test_unexpected_error_is_json_500_without_traceback(app: Flask) -> None:
    def boom() -> str:
        raise RuntimeError("secret internals")

    app.add_url_rule("/boom", "boom", boom)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = app.test_client().get("/boom")
    assert response.status_code == 500
    _assert_error(response.json, "internal_error")
    assert "secret internals" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)


def test_openapi_documents_the_key_header(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    assert spec["components"]["securitySchemes"]["apikey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "apikey",
    }
    assert "/healthz" in spec["paths"] and "/readyz" in spec["paths"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and b"swagger" in docs.data.lower()


def test_readyz_is_503_with_reason_when_redis_is_down(client: FlaskClient) -> None:
    # The unit app's Celery client points at a closed port; fakeredis answers PING,
    # so readiness fails on the workers check, and says so.
    response = client.get("/readyz")
    assert response.status_code == 503
    _assert_error(response.json, "not_ready")
    assert "workers" in response.json["error"]["details"]["checks"]
