"""Each tenant's webhook signing secret, in the Standard Webhooks form ``whsec_<base64>``.

The secret is an HMAC key the service must use itself, so unlike API keys it
is stored as is (in Redis, under the tenant's prefix). It is created on first
use (the first ``GET /webhook_secret`` or the first callback, whichever comes
first) and replaced by :func:`rotate`; a rotation takes effect for every
attempt made after it, retries of earlier deliveries included.
"""

from __future__ import annotations

import base64
import secrets

import redis

from shared.registry import redis_guard, tenant_key

#: The prefix Standard Webhooks libraries strip before base64-decoding the key.
SECRET_PREFIX = "whsec_"  # noqa: S105 (a format prefix, not a secret)
#: Random bytes per secret: a 256-bit HMAC-SHA256 key.
SECRET_BYTES = 32


def _key(tenant: str) -> str:
    return tenant_key(tenant, "webhook_secret")


def new_secret() -> str:
    """A fresh random secret in the ``whsec_`` form."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def get_secret(r: redis.Redis, tenant: str) -> str:
    """The tenant's secret, created on first use (two first uses agree on one secret)."""
    with redis_guard("reading the webhook secret"):
        while True:
            current = r.get(_key(tenant))
            if current is not None:
                return _text(current)
            candidate = new_secret()
            if r.set(_key(tenant), candidate, nx=True):
                return candidate


def rotate(r: redis.Redis, tenant: str) -> str:
    """Replace the tenant's secret and return the new one."""
    secret = new_secret()
    with redis_guard("rotating the webhook secret"):
        r.set(_key(tenant), secret)
    return secret


def _text(value: object) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)
