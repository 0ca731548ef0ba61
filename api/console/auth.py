"""Console sign-in: an API key becomes a session; every page runs under that key.

The session keeps the key's SHA-256 digest (never the key itself), and each
request looks the key record up again, so a revoked key signs its sessions out
at once. The key found is put where :mod:`api.auth` keeps the request's key, so
the service functions run under exactly the tenant and scopes the API would use.
"""

from __future__ import annotations

import time
from typing import cast

from flask import g, session

from api.console.sessions import ConsoleSession
from api.context import services
from shared.keys import ApiKey, hash_key, lookup, lookup_digest

#: Session field holding the signed-in key's digest.
DIGEST = "key_digest"


def sign_in(raw_key: str) -> ApiKey | None:
    """Start a fresh session for ``raw_key``; None (and no session) when the key is unknown."""
    key = lookup(services().redis, raw_key.strip())
    if key is None:
        return None
    current = cast(ConsoleSession, session)
    current.clear()
    current["_created"] = time.time()
    current[DIGEST] = hash_key(raw_key.strip())
    current.rotate = True
    g.api_key = key
    return key


def sign_out() -> None:
    """End the session (its Redis entry and its cookie go with it)."""
    session.clear()


def _by_digest(digest: str) -> ApiKey | None:
    return lookup_digest(services().redis, digest)


def current_key() -> ApiKey | None:
    """The signed-in key of this request, or None (also when it was revoked)."""
    cached = g.get("api_key")
    if cached is not None:
        return cast(ApiKey, cached)
    digest = session.get(DIGEST)
    if not isinstance(digest, str):
        return None
    key = _by_digest(digest)
    if key is None:
        session.clear()
        return None
    g.api_key = key
    return key


def has_scope(scope: str) -> bool:
    """Whether the signed-in key holds ``scope``."""
    key = current_key()
    return key is not None and scope in key.scopes
