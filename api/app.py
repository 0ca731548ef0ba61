"""The Flask application factory."""

from __future__ import annotations

import uuid

from flask import Flask, g, request
from flask_smorest import Api
from redis import Redis
from werkzeug.middleware.proxy_fix import ProxyFix

from api import (
    data,
    errors,
    fresh,
    keys,
    metrics,
    ops,
    ratelimit,
    recommendations,
    reqlog,
    similar,
    slowpeers,
    swagger_assets,
    training,
    tune,
    webhooks,
)
from api.console import views as console_views
from api.context import Services
from api.parsing import Blueprint
from shared.config import Settings
from shared.logs import configure_logging
from shared.queue import make_producer
from shared.registry import connect
from shared.storage import Storage, open_storage

API_PREFIX = "/v1/recommender"


class ContractApi(Api):  # type: ignore[misc]  # flask-smorest is untyped
    """flask-smorest's Api, documenting errors in the contract's shape, not its own."""

    ERROR_SCHEMA = errors.ErrorBodySchema


def create_app(
    settings: Settings | None = None,
    *,
    redis: Redis | None = None,
    storage: Storage | None = None,
) -> Flask:
    """Build the API for ``settings`` (read from the environment when omitted).

    ``redis`` and ``storage``, when given, are used instead of connecting to
    ``settings.redis_url`` and opening the storage root (tests pass fakeredis
    and a temporary storage here).
    """
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    app = Flask("recsys")
    app.config.update(_flask_config(settings))
    app.extensions["recsys"] = Services(
        settings=settings,
        redis=connect(settings) if redis is None else redis,
        storage=open_storage(settings.storage_root()) if storage is None else storage,
        celery=make_producer(settings),
    )

    api = ContractApi(app, spec_kwargs={"security": [{"apikey": []}]})
    api.spec.components.security_scheme(
        "apikey", {"type": "apiKey", "in": "header", "name": "apikey"}
    )
    for blueprint, prefix in _blueprints():
        api.register_blueprint(blueprint, url_prefix=prefix)
    errors.init_app(app)
    app.register_blueprint(swagger_assets.bp)
    console_views.init_app(app)  # /console (outside /v1/recommender)

    @app.before_request
    def _request_id() -> None:
        g.request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex

    @app.after_request
    def _echo_request_id(response):  # type: ignore[no-untyped-def]
        response.headers["X-Request-Id"] = g.get("request_id", "")
        return response

    # Operations: log context + access log (after the request id exists).
    reqlog.init_app(app)
    metrics.init_app(app)
    slowpeers.init_app(app)  # socket timeouts for slow bodies and readers (issue #19)
    ratelimit.init_app(app)  # last: its 429s are still timed, logged and carry the request id
    if settings.trusted_proxies:
        # The client's address (rate limits by address, access log) from the proxies' headers.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]
    return app


def _flask_config(settings: Settings) -> dict[str, object]:
    """Flask and flask-smorest settings: API docs, body size limit."""
    return dict(
        API_TITLE="Recommender training service",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL=swagger_assets.SWAGGER_UI_URL,  # vendored: works offline
        OPENAPI_REDOC_PATH="redoc",
        OPENAPI_REDOC_URL=swagger_assets.REDOC_URL,
        MAX_CONTENT_LENGTH=settings.max_json_body_bytes,
        JSON_SORT_KEYS=False,
    )


def _blueprints() -> list[tuple[Blueprint, str]]:
    """Every blueprint with its URL prefix; resource modules register here."""
    return [
        (ops.blp, ""),
        (data.blp, API_PREFIX),
        (training.blp, API_PREFIX),
        (tune.blp, API_PREFIX),
        (recommendations.blp, API_PREFIX),
        (similar.blp, API_PREFIX),
        (webhooks.blp, API_PREFIX),
        (keys.blp, API_PREFIX),
        (fresh.blp, API_PREFIX),
    ]
