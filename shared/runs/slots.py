"""Fairness between tenants: at most ``RECSYS_TENANT_CONCURRENCY`` trainings of a tenant at once.

A counting semaphore per tenant in Redis: a sorted set of holder tokens
scored by the time their lease runs out. Taking a slot first drops expired
leases, then adds the token if fewer than the limit remain, in one
WATCH/MULTI transaction (so two workers cannot both take the last slot). The
holder renews its lease every heartbeat interval from a background thread
(:class:`TenantSlot`), so a worker that dies (OOM, SIGKILL, a lost machine)
frees its slot once the lease runs out (``heartbeat_stale_after``).

A training task that finds no free slot does not wait on its worker: it notes
why on the run record (the run stays ``queued``) and is retried by Celery a
few seconds later (:data:`RETRY_SECONDS`, far below the broker's visibility
timeout), so the worker takes the next message, which may be another
tenant's. Hand-written rather than a library's semaphore (python-redis-lock
and pottery's ``Redlock`` are mutexes or need Lua); this is three commands.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from typing import cast

import redis

from shared.config import Settings
from shared.registry import redis_guard, tenant_key
from shared.runs.records import FINAL_STATES, transact
from shared.runs.ref import RunRef

log = logging.getLogger(__name__)

#: How the message of a run waiting for a slot starts (the reconciler looks for it).
WAITING_PREFIX = "Queued (tenant limit):"
#: Seconds (before jitter) a task without a slot waits, in the broker, before it tries again.
RETRY_SECONDS = 2.0


def slots_key(tenant: str) -> str:
    """Sorted set: holder token -> lease expiry (Unix seconds)."""
    return tenant_key(tenant, "train", "slots")


def acquire(r: redis.Redis, tenant: str, token: str, limit: int, lease: float,
            now: float | None = None) -> bool:
    """Take one of the tenant's ``limit`` slots for ``lease`` seconds; False when all are held."""
    key = slots_key(tenant)
    moment = time.time() if now is None else now
    with redis_guard("taking a training slot"), r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                live = int(cast(int, pipe.zcount(key, f"({moment}", "+inf")))
                held = pipe.zscore(key, token) is not None
                if not held and live >= limit:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.zremrangebyscore(key, "-inf", moment)
                pipe.zadd(key, {token: moment + lease})
                pipe.expire(key, int(lease) + 60)
                pipe.execute()
                return True
            except redis.WatchError:
                continue


def renew(r: redis.Redis, tenant: str, token: str, lease: float) -> bool:
    """Extend the lease of a slot still held; False when it was lost (expired and taken)."""
    key = slots_key(tenant)
    with redis_guard("renewing a training slot"):
        changed = r.zadd(key, {token: time.time() + lease}, xx=True, ch=True)
        r.expire(key, int(lease) + 60)
    return bool(changed)


def release(r: redis.Redis, tenant: str, token: str) -> None:
    """Give the slot back."""
    with redis_guard("releasing a training slot"):
        r.zrem(slots_key(tenant), token)


def holders(r: redis.Redis, tenant: str, now: float | None = None) -> int:
    """Slots of the tenant held by a live lease."""
    moment = time.time() if now is None else now
    with redis_guard("counting training slots"):
        return int(cast(int, r.zcount(slots_key(tenant), f"({moment}", "+inf")))


def note_waiting(r: redis.Redis, ref: RunRef, limit: int) -> bool:
    """Say on the queued run why it waits (and touch its heartbeat); False once it ended."""
    message = (f"{WAITING_PREFIX} {limit} training run(s) of this tenant are already running "
               f"(at most {limit} at once, RECSYS_TENANT_CONCURRENCY); this run starts when "
               "one ends.")

    def update(record: dict[str, object]) -> dict[str, str] | None:
        if record["status"] in FINAL_STATES or record["phase"] != "queued":
            return None
        return {"message": message, "heartbeat": str(time.time())}

    if transact(r, ref.key, update) is not None:
        return True
    with redis_guard("reading a run"):
        state = cast(list[str | None], r.hmget(ref.key, ["status", "phase"]))
    return state[0] is not None and state[0] not in FINAL_STATES


def retry_delay() -> float:
    """Seconds until a task without a slot tries again (jittered so retries spread)."""
    return RETRY_SECONDS * random.uniform(0.75, 1.5)


class TenantSlot:
    """Holds one training slot of a tenant, renewing its lease until the block ends.

    ``with TenantSlot(...) as slot:`` -- ``slot.held`` says whether a slot was taken.
    """

    def __init__(self, r: redis.Redis, tenant: str, limit: int, lease: float,
                 interval: float) -> None:
        self.r, self.tenant, self.limit, self.lease = r, tenant, limit, lease
        self.interval = interval
        self.token = uuid.uuid4().hex
        self.held = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="tenant-slot", daemon=True)

    def _renew(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not renew(self.r, self.tenant, self.token, self.lease):
                    log.warning("the training slot of tenant %s expired while held",
                                self.tenant)
            except Exception:  # Redis down for a moment: the next beat retries
                log.warning("could not renew a training slot of tenant %s", self.tenant)

    def __enter__(self) -> TenantSlot:
        self.held = acquire(self.r, self.tenant, self.token, self.limit, self.lease)
        if self.held:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.held:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            release(self.r, self.tenant, self.token)
        except Exception:  # the lease runs out on its own
            log.warning("could not release a training slot of tenant %s", self.tenant)


def tenant_slot(r: redis.Redis, tenant: str, settings: Settings) -> TenantSlot:
    """One of ``tenant``'s training slots under the service's settings (the concurrency
    limit, the heartbeat's lease and interval): runs, tuning trials and candidate fits."""
    return TenantSlot(r, tenant, settings.tenant_concurrency, settings.heartbeat_stale_after,
                      settings.heartbeat_interval)
