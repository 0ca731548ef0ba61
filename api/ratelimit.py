"""Rate limits per tenant with flask-limiter, counted in the service's Redis.

- Key: the tenant of the request's API key (every key of a tenant shares one
  budget); a request without a valid key is counted by client address, so
  key-guessing is limited too. Behind a reverse proxy, wrap the app in
  werkzeug's ``ProxyFix`` so the address is the client's.
- Limits (sliding-window counter): ``RECSYS_RATE_LIMIT`` (default
  ``600 per minute``) for the whole API, and ``RECSYS_RATE_LIMIT_RECOMMEND``
  (default ``6000 per minute``) as a separate budget for
  ``/recommended_items``, the hot read path a storefront calls per page view.
  Either can be ``off``. ``/healthz``, ``/readyz``, ``/metrics`` and the API
  docs are never limited.
- A limited request gets 429 in the contract's error format with
  ``Retry-After``; every limited endpoint answers with ``X-RateLimit-Limit``,
  ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (Unix seconds).
- Fails open: when Redis cannot be reached the request goes on unlimited
  (``swallow_errors``), and the endpoint itself answers 503 if it needs Redis.

Storage: flask-limiter's Redis storage opens its own connection from a URL at
start. :class:`AppRedisStorage` instead uses the app's own client
(``services().redis``) at each call, so limits share the service's connection
settings (short timeouts, no retry storm) and, in unit tests, its fakeredis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask, Response, current_app, request
from flask_limiter import ApplicationLimit, Limiter, RateLimitExceeded
from limits.storage import RedisStorage
from limits.storage.base import Storage
from redis.commands.core import Script

from api.auth import HEADER, authenticate
from api.context import services
from api.errors import error_response
from shared.errors import DependencyUnavailable, Unauthorized
from shared.registry import global_key

log = logging.getLogger(__name__)

#: Blueprints never limited: health, readiness, metrics, and flask-smorest's docs.
EXEMPT_BLUEPRINTS = frozenset({"ops", "api-docs"})
#: The blueprint with its own budget (``RECSYS_RATE_LIMIT_RECOMMEND``).
RECOMMEND_BLUEPRINT = "recommendations"
#: Prefix of every rate-limit key in Redis (under the service's ``recsys:`` namespace).
KEY_PREFIX = global_key("ratelimit")
_EXTENSION = "recsys_limiter"


class _CurrentAppRedis:
    """Forwards every attribute to the Redis client of the app handling this request."""

    def register_script(self, script: bytes | str) -> Script:
        """A script bound to this forwarder (so to whichever client is current at call time)."""
        return Script(self, script)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(services().redis, name)


class AppRedisStorage(RedisStorage):
    """limits' Redis storage on the current app's Redis client (``recsys-app://``).

    The Lua scripts are registered against :class:`_CurrentAppRedis`, so each
    call runs on the client of the app serving the request.
    """

    STORAGE_SCHEME = ["recsys-app"]

    def __init__(
        self,
        uri: str,
        key_prefix: str = KEY_PREFIX,
        wrap_exceptions: bool = False,
        **options: float | str | bool,
    ) -> None:
        Storage.__init__(self, uri, wrap_exceptions=wrap_exceptions, **options)
        self.key_prefix = key_prefix
        self.target_server = "redis"
        self.dependency = self.dependencies["redis"].module
        self.storage = _CurrentAppRedis()
        self.initialize_storage(uri)


def rate_limit_key() -> str:
    """``tenant:<tenant>`` for a valid API key, else ``addr:<client address>``."""
    if request.headers.get(HEADER, "").strip():
        try:
            return f"tenant:{authenticate().tenant}"
        except (Unauthorized, DependencyUnavailable):
            pass  # the view answers 401/503 itself; count the attempt by address
    return f"addr:{request.remote_addr or 'unknown'}"


def _is_exempt() -> bool:
    return request.blueprint in EXEMPT_BLUEPRINTS


def _is_recommend() -> bool:
    return request.blueprint == RECOMMEND_BLUEPRINT


def _not_recommend() -> bool:
    return not _is_recommend()


def _too_many(exc: RateLimitExceeded) -> Response:
    limiter: Limiter | None = current_app.extensions.get(_EXTENSION)
    retry_after = 1
    current = limiter.current_limit if limiter is not None else None
    if current is not None:
        try:
            retry_after = max(1, int(current.reset_at - time.time()))
        except Exception:  # storage unreadable now: a conservative default
            retry_after = 1
    limit = str(exc.limit.limit) if getattr(exc, "limit", None) is not None else exc.description
    response = error_response(
        429,
        "rate_limited",
        f"Too many requests: the limit is {limit}. Retry after {retry_after} s.",
        {"limit": limit, "retry_after_s": retry_after},
    )
    response.headers["Retry-After"] = str(retry_after)
    return response


class _QuietStorageErrors(logging.Filter):
    """One warning line, not a traceback per request, while Redis is down (fail-open)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Strip the traceback of Redis connection errors; keep everything else."""
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            record.msg = f"{record.getMessage()} (fail open): {exc}"
            record.args = None
            record.exc_info = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def init_app(app: Flask) -> Limiter | None:
    """Limit every API endpoint of ``app`` per tenant; None when both limits are off."""
    settings = app.extensions["recsys"].settings
    limits: list[str | Callable[[], str] | ApplicationLimit] = []
    if settings.rate_limit != "off":
        limits.append(ApplicationLimit(settings.rate_limit, exempt_when=_is_recommend))
    if settings.rate_limit_recommend != "off":
        limits.append(
            ApplicationLimit(
                settings.rate_limit_recommend, scope="recommend", exempt_when=_not_recommend
            )
        )
    if not limits:
        return None
    limiter = Limiter(
        key_func=rate_limit_key,
        application_limits=limits,
        storage_uri="recsys-app://",
        strategy="sliding-window-counter",
        headers_enabled=True,
        swallow_errors=True,
        key_prefix="v1",
    )
    limiter.request_filter(_is_exempt)
    limiter.init_app(app)
    limiter_log = logging.getLogger("flask-limiter")
    if not any(isinstance(f, _QuietStorageErrors) for f in limiter_log.filters):
        limiter_log.addFilter(_QuietStorageErrors())
    app.extensions[_EXTENSION] = limiter
    app.register_error_handler(RateLimitExceeded, _too_many)
    return limiter
