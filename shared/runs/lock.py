"""The per-model training lock: one attempt trains a model at a time.

A duplicate delivery of a training task (broker re-delivery, reject on worker
loss) finds the lock held and leaves the run to its holder. The lock expires
after ``heartbeat_stale_after`` unless the holder's heartbeat refreshes it, so
a dead holder never blocks the model for long.
"""

from __future__ import annotations

import redis

from shared.registry import redis_guard
from shared.runs.records import lock_key


def acquire_lock(r: redis.Redis, tenant: str, model_id: str, token: str, ttl: float) -> bool:
    """Take the model's training lock for ``ttl`` seconds; False when someone holds it."""
    with redis_guard("taking a model lock"):
        return bool(r.set(lock_key(tenant, model_id), token, nx=True, px=int(ttl * 1000)))


def refresh_lock(r: redis.Redis, tenant: str, model_id: str, token: str, ttl: float) -> bool:
    """Extend the lock while we hold it; False when it was lost."""
    key = lock_key(tenant, model_id)
    with redis_guard("refreshing a model lock"):
        if r.get(key) != token:
            return False
        return bool(r.pexpire(key, int(ttl * 1000)))


def release_lock(r: redis.Redis, tenant: str, model_id: str, token: str) -> None:
    """Give the lock back if we still hold it."""
    key = lock_key(tenant, model_id)
    with redis_guard("releasing a model lock"), r.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(key)  # type: ignore[no-untyped-call]
            if pipe.get(key) == token:
                pipe.multi()
                pipe.delete(key)
                pipe.execute()
            else:
                pipe.unwatch()
        except redis.WatchError:
            pass
