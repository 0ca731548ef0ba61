"""API-key authentication and scope checks.

Every endpoint except health, readiness, metrics and the docs is wrapped in
:func:`require`; the key's tenant becomes :func:`current_tenant` for the request.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar, cast

from flask import g, request

from api.context import services
from shared.errors import Forbidden, Unauthorized
from shared.keys import ApiKey, lookup

P = ParamSpec("P")
R = TypeVar("R")

HEADER = "apikey"


def authenticate() -> ApiKey:
    """The key presented with this request; 401 when missing or unknown."""
    cached = g.get("api_key")
    if cached is not None:
        return cast(ApiKey, cached)
    raw = request.headers.get(HEADER, "").strip()
    if not raw:
        raise Unauthorized(
            "This endpoint needs an API key in the 'apikey' header.", code="missing_api_key"
        )
    key = lookup(services().redis, raw)
    if key is None:
        raise Unauthorized("The API key is not valid.", code="invalid_api_key")
    g.api_key = key
    return key


def require(scope: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: the request must carry a key holding ``scope``."""

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            key = authenticate()
            if scope not in key.scopes:
                raise Forbidden(
                    f"This API key lacks the '{scope}' scope this endpoint needs.",
                    code="missing_scope",
                    details={"required_scope": scope, "key_scopes": sorted(key.scopes)},
                )
            return view(*args, **kwargs)

        return wrapper

    return decorate


def current_tenant() -> str:
    """The tenant of the authenticated key."""
    return authenticate().tenant
