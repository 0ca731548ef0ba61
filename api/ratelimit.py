"""Rate limits per tenant with flask-limiter, counted in the service's Redis.

- Key: the tenant of the request's API key (every key of a tenant shares one
  budget); a request without a valid key is counted by client address, so
  key-guessing is limited too. Behind a reverse proxy, set
  ``RECSYS_TRUSTED_PROXIES`` (werkzeug's ``ProxyFix``) so the address is the client's.
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

Storage: limits' own Redis storage, built (through flask-limiter's public
``storage_options``) on the connection pool of the app's Redis client, the one
:func:`api.app.create_app` was given or connected. Limits thus share the
service's connection settings (short timeouts, no retry storm) and, in unit
tests, its fakeredis, with no subclass of a library class and no reach into
limits' internals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask, Response, current_app, request
from flask_limiter import ApplicationLimit, Limiter, RateLimitExceeded

from api.auth import HEADER, authenticate
from api.context import Services
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
    svc: Services = app.extensions["recsys"]
    settings = svc.settings
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
    # limits' RedisStorage documents ``connection_pool`` (the pool of the app's client, so
    # the one create_app was given); flask-limiter annotates the options as str | int only.
    storage_options: dict[str, Any] = {"connection_pool": svc.redis.connection_pool,
                                       "key_prefix": KEY_PREFIX}
    limiter = Limiter(
        key_func=rate_limit_key,
        application_limits=limits,
        storage_uri="redis://",
        storage_options=storage_options,
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
