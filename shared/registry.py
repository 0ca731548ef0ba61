"""Redis connections and the key layout of the metadata registry.

Every key lives under ``recsys:``; per-tenant keys under ``recsys:t:<tenant>:``
so tenants never share a key. Domain modules (``keys``, ``batches``, ``runs``,
``deliveries``) build their keys with :func:`tenant_key` and :func:`global_key`.
Redis errors are turned into :class:`~shared.errors.DependencyUnavailable` at
the boundary by :func:`redis_guard`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from shared.config import Settings
from shared.errors import DependencyUnavailable

PREFIX = "recsys"

#: Seconds to wait for a TCP connect before answering 503; keeps a down Redis from hanging requests.
CONNECT_TIMEOUT = 1.0
#: Seconds to wait for one reply; generous, since a busy server may stall under load.
SOCKET_TIMEOUT = 10.0


def connect(settings: Settings) -> redis.Redis:
    """A client with short timeouts, returning ``str`` values.

    Built with ``from_url``, so its connections make one attempt per command (no
    redis-py retries): a down server is a quick 503, a refused password is final.
    """
    return redis.Redis.from_url(
        settings.effective_redis_url(),
        decode_responses=True,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT,
        health_check_interval=30,
        retry_on_timeout=False,
    )


def as_str(value: Any) -> str | None:
    """A reply value as ``str`` (clients use decode_responses; typing says bytes | str)."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def as_str_dict(value: Any) -> dict[str, str]:
    """A hash reply (HGETALL) as ``dict[str, str]``."""
    return {str(as_str(k)): str(as_str(v)) for k, v in dict(value or {}).items()}


def global_key(*parts: str) -> str:
    """A key shared by all tenants (API key hashes, schedules)."""
    return ":".join((PREFIX, *parts))


def tenant_key(tenant: str, *parts: str) -> str:
    """A key owned by one tenant."""
    return ":".join((PREFIX, "t", tenant, *parts))


@contextmanager
def redis_guard(action: str) -> Iterator[None]:
    """Turn Redis connection failures into a 503-mapped DependencyUnavailable."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise DependencyUnavailable(
            f"Redis is unreachable while {action}; try again shortly.",
            details={"dependency": "redis"},
        ) from exc
    except redis.exceptions.OutOfMemoryError as exc:
        raise DependencyUnavailable(
            f"Redis is full (maxmemory reached) while {action}; an operator must raise "
            "maxmemory or remove data.",
            details={"dependency": "redis"},
        ) from exc
    except redis.exceptions.BusyLoadingError as exc:
        raise DependencyUnavailable(
            f"Redis is still loading its data while {action}; try again shortly.",
            details={"dependency": "redis"},
        ) from exc
