"""Rate limits per tenant: 429 in the contract's format with the usual headers; fail open."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import fakeredis
import pytest
from flask import Flask

from api.app import create_app
from shared.config import Settings
from shared.errors import ConfigError
from shared.keys import SCOPES, create_key
from shared.registry import connect

SECRET = "/v1/recommender/webhook_secret"
RECOMMEND = "/v1/recommender/recommended_items?model_id=nope"

AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(tmp_path: Path, fake_redis: fakeredis.FakeRedis) -> AppFactory:
    """Build the API with the given settings overrides, on fakeredis."""

    def build(**overrides: object) -> Flask:
        settings = Settings(data_dir=tmp_path / "var", **overrides)  # type: ignore[arg-type]
        app = create_app(settings, redis=fake_redis)
        app.config["TESTING"] = True
        return app

    return build


def _key(r: fakeredis.FakeRedis, tenant: str) -> dict[str, str]:
    raw, _ = create_key(r, tenant, list(SCOPES))
    return {"apikey": raw}


def test_a_tenant_over_its_limit_gets_429_in_the_error_format_with_headers(
    make_app: AppFactory, fake_redis: fakeredis.FakeRedis
) -> None:
    client = make_app(rate_limit="3 per minute").test_client()
    acme = _key(fake_redis, "acme")

    remaining = []
    for _ in range(3):
        response = client.get(SECRET, headers=acme)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "3"
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
        assert int(response.headers["X-RateLimit-Reset"]) > time.time() - 1
    assert remaining == [2, 1, 0]

    limited = client.get(SECRET, headers={**acme, "X-Request-Id": "rl-1"})
    assert limited.status_code == 429
    body = limited.get_json()
    assert body["error"]["code"] == "rate_limited"
    assert "3 per 1 minute" in body["error"]["message"]
    # sliding window: hits of this window still weigh in the next one, so up to 2 windows
    retry_after = int(limited.headers["Retry-After"])
    assert 1 <= retry_after <= 120
    assert abs(body["error"]["details"]["retry_after_s"] - retry_after) <= 1
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert limited.headers["X-Request-Id"] == "rl-1"
    assert limited.mimetype == "application/json"


def test_the_budget_is_per_tenant_and_shared_by_its_keys_and_endpoints(
    make_app: AppFactory, fake_redis: fakeredis.FakeRedis
) -> None:
    client = make_app(rate_limit="2 per minute").test_client()
    acme_a, acme_b = _key(fake_redis, "acme"), _key(fake_redis, "acme")
    other = _key(fake_redis, "globex")

    assert client.get(SECRET, headers=acme_a).status_code == 200
    assert client.post(f"{SECRET}/rotate", headers=acme_b).status_code == 200
    assert client.get(SECRET, headers=acme_a).status_code == 429
    assert client.get("/v1/recommender/keys", headers=acme_b).status_code == 429
    # another tenant is unaffected
    assert client.get(SECRET, headers=other).status_code == 200


def test_requests_without_a_valid_key_are_limited_by_address(make_app: AppFactory) -> None:
    client = make_app(rate_limit="2 per minute").test_client()
    statuses = [
        client.get(SECRET, headers={"apikey": "rk_wrong-guess"}).status_code for _ in range(3)
    ]
    assert statuses == [401, 401, 429]
    from_elsewhere = client.get(SECRET, environ_base={"REMOTE_ADDR": "10.9.8.7"})
    assert from_elsewhere.status_code == 401


def test_recommendations_have_their_own_budget(
    make_app: AppFactory, fake_redis: fakeredis.FakeRedis
) -> None:
    client = make_app(rate_limit="1 per minute", rate_limit_recommend="3 per minute").test_client()
    acme = _key(fake_redis, "acme")
    assert client.get(SECRET, headers=acme).status_code == 200
    assert client.get(SECRET, headers=acme).status_code == 429

    served = [client.get(RECOMMEND, headers=acme) for _ in range(4)]
    assert [r.status_code == 429 for r in served] == [False, False, False, True]
    assert served[0].headers["X-RateLimit-Limit"] == "3"


def test_health_metrics_and_docs_are_never_limited(make_app: AppFactory) -> None:
    client = make_app(rate_limit="1 per minute").test_client()
    for path in ("/healthz", "/metrics", "/openapi.json"):
        for _ in range(3):
            response = client.get(path)
            assert response.status_code == 200, path
            assert "X-RateLimit-Limit" not in response.headers


def test_limits_can_be_turned_off(make_app: AppFactory, fake_redis: fakeredis.FakeRedis) -> None:
    client = make_app(rate_limit="off", rate_limit_recommend="off").test_client()
    acme = _key(fake_redis, "acme")
    for _ in range(5):
        response = client.get(SECRET, headers=acme)
        assert response.status_code == 200
        assert "X-RateLimit-Limit" not in response.headers


def test_the_limiter_fails_open_when_redis_is_down(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(
        data_dir=tmp_path / "var",
        redis_url=f"redis://127.0.0.1:{port}/0",
        rate_limit="1 per minute",
    )
    app = create_app(settings)
    client = app.test_client()
    started = time.monotonic()
    for _ in range(3):
        response = client.get(SECRET, headers={"apikey": "rk_anything"})
        assert response.status_code == 503, response.get_data(as_text=True)
        assert response.get_json()["error"]["code"] != "rate_limited"
    assert client.get("/healthz").status_code == 200
    assert time.monotonic() - started < 5


def test_rate_limit_settings_are_validated() -> None:
    assert Settings.from_env({"RECSYS_RATE_LIMIT": "10/second"}).rate_limit == "10/second"
    assert Settings.from_env({"RECSYS_RATE_LIMIT": "OFF"}).rate_limit == "off"
    with pytest.raises(ConfigError, match="RECSYS_RATE_LIMIT_RECOMMEND"):
        Settings.from_env({"RECSYS_RATE_LIMIT_RECOMMEND": "lots"})


@pytest.mark.parametrize(
    ("path", "scope"), [("/v1/recommender/train", "train"), (RECOMMEND, "recommend")]
)
def test_json_bodies_over_the_size_limit_get_413(
    make_app: AppFactory, fake_redis: fakeredis.FakeRedis, path: str, scope: str
) -> None:
    client = make_app(max_json_body_bytes=2048).test_client()
    raw, _ = create_key(fake_redis, "acme", [scope])
    body = json.dumps({"model_id": "m", "data_tags": ["x" * 100] * 100})
    assert len(body) > 2048

    response = client.post(
        path, data=body, headers={"apikey": raw, "Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"


def test_the_real_client_settings_keep_the_outage_fast(tmp_path: Path) -> None:
    """connect() must not retry with backoff (redis-py's default) or limits would slow 503s."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = connect(Settings(data_dir=tmp_path, redis_url=f"redis://127.0.0.1:{port}/0"))
    started = time.monotonic()
    with pytest.raises(Exception, match="onnect"):
        client.ping()
    assert time.monotonic() - started < 2


def test_limits_are_counted_in_the_redis_the_app_was_built_with(
    make_app: AppFactory, fake_redis: fakeredis.FakeRedis
) -> None:
    """The limiter shares the app's client (its pool), under the service's key prefix."""
    from api.ratelimit import KEY_PREFIX

    client = make_app(rate_limit="5 per minute").test_client()
    acme = _key(fake_redis, "acme")
    assert client.get(SECRET, headers=acme).status_code == 200
    keys = fake_redis.keys(f"{KEY_PREFIX}:*")
    assert keys, (
        "no rate-limit key in the app's Redis: limits' RedisStorage no longer builds its "
        "client from storage_options['connection_pool'] (check the limits release notes)"
    )
    assert any("tenant:acme" in key for key in keys)


def test_behind_a_trusted_proxy_the_forwarded_client_address_is_limited(
    make_app: AppFactory,
) -> None:
    # given the API behind one proxy (compose's nginx), which appends the peer's address
    client = make_app(rate_limit="2 per minute", trusted_proxies=1).test_client()
    proxy = {"REMOTE_ADDR": "172.18.0.5"}

    def guess(client_addr: str) -> int:
        return client.get(SECRET, headers={"apikey": "rk_wrong-guess",
                                           "X-Forwarded-For": client_addr},
                          environ_base=proxy).status_code

    # when one client guesses keys past the limit, then then another client asks
    statuses = [guess("203.0.113.7") for _ in range(3)]
    # then the first is limited by its own address, not the proxy's, and the other is not
    assert statuses == [401, 401, 429]
    assert guess("198.51.100.9") == 401
    # and a forged header before the proxy's entry does not escape the limit
    assert guess("10.0.0.1, 203.0.113.7") == 429


def test_without_trusted_proxies_forwarded_headers_are_ignored(make_app: AppFactory) -> None:
    client = make_app(rate_limit="2 per minute").test_client()
    statuses = [client.get(SECRET, headers={"apikey": "rk_wrong-guess",
                                            "X-Forwarded-For": f"203.0.113.{n}"}).status_code
                for n in range(3)]
    assert statuses == [401, 401, 429]
