"""Each tenant's webhook signing secret, in the Standard Webhooks form ``whsec_<base64>``.

The secret is an HMAC key the service must use itself, so unlike API keys it
is stored as is (in Redis, under the tenant's prefix). It is created on first
use (the first ``GET /webhook_secret`` or the first callback, whichever comes
first) and replaced by :func:`rotate`; a rotation takes effect for every
attempt made after it, retries of earlier deliveries included.

A rotation keeps the previous secret for a grace period (``RECSYS_WEBHOOK_SECRET_GRACE_SECONDS``,
24 h by default) in a key that expires by itself; while it lasts, every delivery is
signed with both (:func:`signing_secrets`), as Standard Webhooks allows: the
``webhook-signature`` header lists one ``v1,<signature>`` per secret, space-separated,
and a receiver accepts the delivery when any one of them verifies. Receivers that
still hold the old secret keep working until they are updated.
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


def _previous_key(tenant: str) -> str:
    return tenant_key(tenant, "webhook_secret_previous")


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


def rotate(r: redis.Redis, tenant: str, grace_seconds: int = 0) -> str:
    """Replace the tenant's secret and return the new one.

    The secret replaced keeps signing deliveries, next to the new one, for ``grace_seconds``
    (a second rotation within that time ends the grace of the first one's secret).
    """
    secret = new_secret()
    with redis_guard("rotating the webhook secret"):
        previous = r.set(_key(tenant), secret, get=True)  # the swap is atomic
        if previous is not None and grace_seconds > 0:
            r.set(_previous_key(tenant), _text(previous), ex=grace_seconds)
        else:
            r.delete(_previous_key(tenant))
    return secret


def signing_secrets(r: redis.Redis, tenant: str) -> list[str]:
    """The secrets a delivery is signed with now: the current one, then the previous one
    while its grace period after a rotation lasts."""
    current = get_secret(r, tenant)
    with redis_guard("reading the webhook secret"):
        previous = r.get(_previous_key(tenant))
    if previous is None or _text(previous) == current:
        return [current]
    return [current, _text(previous)]


def _text(value: object) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)
