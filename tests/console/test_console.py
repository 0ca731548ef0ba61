"""The console over Flask's test client (fakeredis): sign-in, sessions, CSRF, scopes, pages,
and the offline API docs."""

from __future__ import annotations

import re
from pathlib import Path

import fakeredis
from flask import Flask
from flask.testing import FlaskClient

from api.console.sessions import COOKIE_NAME, session_key
from shared.keys import create_key, hash_key, revoke_key

ROOT = Path(__file__).resolve().parents[2]
TOKEN_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf(client: FlaskClient, path: str = "/console/signin") -> str:
    """The CSRF token of a console form."""
    match = TOKEN_RE.search(client.get(path).get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def sign_in(client: FlaskClient, key: str) -> None:
    """Sign in through the form, as a person would."""
    response = client.post("/console/signin", data={"api_key": key, "csrf_token": csrf(client)})
    assert response.status_code == 302, response.get_data(as_text=True)


def session_cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie(COOKIE_NAME, path="/console")
    assert cookie is not None
    return cookie.value


def test_signing_in_sets_an_opaque_httponly_strict_cookie(client: FlaskClient, api_key: str,
                                                          fake_redis: fakeredis.FakeRedis) -> None:
    # given the sign-in form, when a valid key is posted
    token = csrf(client)
    response = client.post("/console/signin", data={"api_key": api_key, "csrf_token": token})
    # then the browser is sent on, with a cookie holding only a random id
    assert response.status_code == 302
    header = next(h for h in response.headers.getlist("Set-Cookie") if COOKIE_NAME in h)
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Path=/console" in header
    assert "Secure" not in header  # plain HTTP
    sid = session_cookie(client)
    assert api_key not in header and len(sid) == 43
    stored = fake_redis.get(session_key(sid))
    assert stored and api_key not in stored and hash_key(api_key) in stored
    assert 0 < fake_redis.ttl(session_key(sid)) <= 2 * 3600


def test_cookie_is_secure_over_https(app: Flask, api_key: str) -> None:
    client = app.test_client()
    page = client.get("/console/signin", base_url="https://console.example")
    token = TOKEN_RE.search(page.get_data(as_text=True)).group(1)  # type: ignore[union-attr]
    response = client.post("/console/signin", base_url="https://console.example",
                           data={"api_key": api_key, "csrf_token": token})
    header = next(h for h in response.headers.getlist("Set-Cookie") if COOKIE_NAME in h)
    assert "Secure" in header


def test_sign_in_rotates_the_session_id(client: FlaskClient, api_key: str) -> None:
    csrf(client)
    before = session_cookie(client)  # the anonymous session that holds the form's token
    sign_in(client, api_key)
    assert session_cookie(client) != before


def test_a_bad_key_is_refused_and_pages_need_a_session(client: FlaskClient) -> None:
    response = client.post("/console/signin",
                           data={"api_key": "rk_nope", "csrf_token": csrf(client)})
    assert response.status_code == 401
    assert "not valid" in response.get_data(as_text=True)
    page = client.get("/console/overview")
    assert page.status_code == 302 and page.headers["Location"].endswith("/console/signin")


def test_a_form_without_its_csrf_token_is_refused(client: FlaskClient, api_key: str) -> None:
    sign_in(client, api_key)
    for path in ("/console/signout", "/console/runs", "/console/try", "/console/upload",
                 "/console/tuning", "/console/try/similar", "/console/runs/m/schedule",
                 "/console/runs/m/schedule/delete", "/console/runs/m/serve"):
        response = client.post(path, data={"model_id": "m"})
        assert response.status_code == 400, path
        assert "did not come from this console" in response.get_data(as_text=True)
    assert client.get("/console/overview").status_code == 200  # still signed in


def test_sign_out_ends_the_session(client: FlaskClient, api_key: str,
                                   fake_redis: fakeredis.FakeRedis) -> None:
    sign_in(client, api_key)
    sid = session_cookie(client)
    response = client.post("/console/signout", data={"csrf_token": csrf(client,
                                                                          "/console/overview")})
    assert response.status_code == 302
    assert fake_redis.get(session_key(sid)) is None
    assert client.get_cookie(COOKIE_NAME, path="/console") is None
    assert client.get("/console/overview").status_code == 302


def test_sessions_expire(app: Flask, client: FlaskClient, api_key: str,
                         fake_redis: fakeredis.FakeRedis) -> None:
    # idle: Redis drops the entry when its TTL runs out (here: at once)
    sign_in(client, api_key)
    fake_redis.delete(session_key(session_cookie(client)))
    assert client.get("/console/overview").status_code == 302
    # absolute: an active session still ends after the maximum lifetime
    sign_in(client, api_key)
    assert client.get("/console/overview").status_code == 200
    app.config["CONSOLE_SESSION_MAX_SECONDS"] = 0
    assert client.get("/console/overview").status_code == 302


def test_a_revoked_key_signs_its_sessions_out(client: FlaskClient, api_key: str,
                                             fake_redis: fakeredis.FakeRedis) -> None:
    sign_in(client, api_key)
    revoke_key(fake_redis, hash_key(api_key)[:12])
    assert client.get("/console/overview").status_code == 302


def test_the_api_sets_no_cookie(client: FlaskClient, auth: dict[str, str]) -> None:
    response = client.get("/v1/recommender/data_batch", headers=auth)
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers


def test_a_key_without_train_sees_no_runs(client: FlaskClient,
                                          fake_redis: fakeredis.FakeRedis) -> None:
    raw, _ = create_key(fake_redis, "acme", ["data:read", "recommend"])
    sign_in(client, raw)
    page = client.get("/console/overview").get_data(as_text=True)
    assert "Runs and models" not in page and "Try it" in page
    runs = client.get("/console/runs")
    assert runs.status_code == 403 and "train" in runs.get_data(as_text=True)
    assert client.get("/console/runs/anything").status_code == 403
    assert client.get("/console/runs/anything/card").status_code == 403
    assert "Tuning" not in page
    for path in ("/console/tuning", "/console/tuning/anything"):
        response = client.get(path)
        assert response.status_code == 403 and "train" in response.get_data(as_text=True)
    token = csrf(client, "/console/try")
    for path in ("/console/tuning", "/console/runs/anything/schedule",
                 "/console/runs/anything/schedule/delete", "/console/runs/anything/serve"):
        assert client.post(path, data={"csrf_token": token, "version": "1"}).status_code == 403


def test_overview_shows_only_the_tenants_batches(client: FlaskClient, auth: dict[str, str],
                                                  fake_redis: fakeredis.FakeRedis) -> None:
    # given batches of tenant acme and of another tenant
    body = {"interactions": [{"source_id": "u1", "target_id": "i1", "type": "view",
                              "timestamp": "2026-03-02T10:00:00Z"},
                             {"source_id": "u2", "target_id": "i1", "type": "view",
                              "timestamp": "2026-03-03T10:00:00Z"}],
            "entities": [{"id": "i1", "type": "item", "name": "Hose"}], "tags": ["shop"]}
    assert client.post("/v1/recommender/data_batch", json=body, headers=auth).status_code == 201
    other, _ = create_key(fake_redis, "globex", ["data:write", "data:read"])
    other_body = {"interactions": [{"source_id": "x", "target_id": "y"}], "tags": ["secret"]}
    assert client.post("/v1/recommender/data_batch", json=other_body,
                       headers={"apikey": other}).status_code == 201
    # when acme's key signs in to the overview
    sign_in(client, auth["apikey"])
    page = client.get("/console/overview").get_data(as_text=True)
    # then acme's totals, groups and a per-day chart appear, and nothing of globex
    assert 'id="total-interactions">2<' in page and 'id="total-entities">1<' in page
    assert "shop" in page and "secret" not in page
    assert 'id="chart-per-day"' in page and "[1772409600, 1772496000]" in page


def test_unknown_model_pages_are_404_pages(client: FlaskClient, api_key: str) -> None:
    sign_in(client, api_key)
    response = client.get("/console/runs/nope")
    assert response.status_code == 404
    assert "There is no model" in response.get_data(as_text=True)
    assert response.mimetype == "text/html"


def test_try_it_explains_bad_metadata(client: FlaskClient, api_key: str) -> None:
    sign_in(client, api_key)
    token = csrf(client, "/console/try")
    response = client.post("/console/try", headers={"HX-Request": "true"}, data={
        "csrf_token": token, "model_id": "m", "source_id": "u1", "source_metadata": "{nope"})
    assert response.status_code == 422
    assert "not valid JSON" in response.get_data(as_text=True)


def test_docs_load_their_assets_from_this_server(client: FlaskClient) -> None:
    for page, asset in (("/docs", "/docs-assets/swagger-ui/swagger-ui-bundle.js"),
                        ("/redoc", "/docs-assets/redoc/redoc.standalone.js")):
        html = client.get(page).get_data(as_text=True)
        assert asset in html and "cdn.jsdelivr" not in html
        served = client.get(asset)
        assert served.status_code == 200 and len(served.data) > 100_000


def test_vendored_javascript_ships_with_its_licences() -> None:
    for folder in ("api/console/static/vendor/htmx", "api/console/static/vendor/uplot",
                   "api/swagger_assets/static/swagger-ui", "api/swagger_assets/static/redoc"):
        assert (ROOT / folder / "LICENSE").is_file(), folder
        assert (ROOT / folder / "VERSION").is_file(), folder
