"""Webhook deliveries of finished runs: the persisted record and the retry schedule.

One delivery per run. Keys (under the tenant, see :mod:`shared.registry`)::

    delivery:<model_id>:<version>        hash: webhook_id, url, payload, state, attempts, ...
    delivery:<model_id>:<version>:log    list: the last attempts (JSON), newest last
    delivery:<model_id>:<version>:lock   string: held while one attempt sends

plus the global sorted set ``recsys:callbacks:schedule`` of pending
deliveries (member ``[tenant, model_id, version]`` as JSON) scored by when
the scan may next enqueue them. The scan (every few seconds, on beat)
claims due members atomically by pushing their score one lease ahead
(:data:`ATTEMPT_LEASE`) and enqueues one attempt each; an attempt that ends
sets the score to the next retry time or removes the member. So a retry due
hours later is a Redis entry rather than a Celery countdown (which must stay
below the broker's visibility timeout), the schedule survives worker
restarts, and an attempt whose message or worker is lost is enqueued again
once its lease runs out. Duplicate attempt messages are harmless: an attempt
sends only while holding the delivery's lock and only when it is due.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis
from celery import Celery

from shared.contracts import (
    QUEUE_CALLBACKS,
    TASK_DELIVER_CALLBACK,
    CallbackDeliveryState,
    CallbackStatus,
    RunStatus,
)
from shared.registry import global_key, redis_guard, tenant_key

log = logging.getLogger(__name__)

#: Seconds a claimed (or just scheduled) delivery stays out of the scan; above an attempt's
#: hard time limit plus the lock's lifetime, so only a lost attempt is ever enqueued again.
ATTEMPT_LEASE = 120.0
#: Seconds the per-delivery lock lives when its holder dies without releasing it.
LOCK_TTL = 90
#: Attempts kept in a delivery's log.
MAX_LOG_ENTRIES = 20
#: Deliveries one scan enqueues at most; the next scan takes the rest.
SCAN_BATCH = 500
#: A delay of ``d`` seconds is drawn from ``[d * (1 - JITTER), d * (1 + JITTER)]``.
JITTER = 0.2
#: The longest wait a receiver's ``Retry-After`` can impose between two attempts.
MAX_RETRY_AFTER = 24 * 3600.0
#: An attempt may start this early (clock skew between scanner and worker).
DUE_TOLERANCE = 1.0

SCHEDULE_KEY = global_key("callbacks", "schedule")

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
end
return due
"""


@dataclass(frozen=True)
class Delivery:
    """One run's webhook delivery as stored."""

    tenant: str
    model_id: str
    version: int
    webhook_id: str
    url: str
    payload: str
    state: CallbackDeliveryState
    attempts: int
    last_response_code: int | None
    next_attempt_at: float | None

    def is_due(self, now: float) -> bool:
        """True when this delivery is pending and its next attempt time has come."""
        return (
            self.state == "pending"
            and self.next_attempt_at is not None
            and self.next_attempt_at <= now + DUE_TOLERANCE
        )


@dataclass(frozen=True)
class AttemptRecord:
    """What one attempt did, as kept in the delivery's log."""

    attempt: int
    at: float
    response_code: int | None
    error: str | None
    duration_ms: int
    outcome: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, with an ISO-8601 time."""
        return {
            "attempt": self.attempt,
            "at": iso(self.at),
            "response_code": self.response_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
            "outcome": self.outcome,
        }


def iso(epoch: float) -> str:
    """An epoch time as ISO-8601 UTC with a Z suffix."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def record_key(tenant: str, model_id: str, version: int) -> str:
    """The delivery hash of one run."""
    return tenant_key(tenant, "delivery", model_id, str(version))


def log_key(tenant: str, model_id: str, version: int) -> str:
    """The attempt log of one run's delivery."""
    return tenant_key(tenant, "delivery", model_id, str(version), "log")


def lock_key(tenant: str, model_id: str, version: int) -> str:
    """The lock one attempt holds while it sends."""
    return tenant_key(tenant, "delivery", model_id, str(version), "lock")


def schedule_member(tenant: str, model_id: str, version: int) -> str:
    """The schedule entry naming one delivery."""
    return json.dumps([tenant, model_id, version], separators=(",", ":"))


def parse_member(member: str) -> tuple[str, str, int] | None:
    """The (tenant, model_id, version) a schedule entry names; None when unreadable."""
    try:
        tenant, model_id, version = json.loads(member)
        return str(tenant), str(model_id), int(version)
    except (ValueError, TypeError):
        return None


def _opt_int(raw: str | None) -> int | None:
    return int(raw) if raw else None


def _opt_float(raw: str | None) -> float | None:
    return float(raw) if raw else None


def load(r: redis.Redis, tenant: str, model_id: str, version: int) -> Delivery | None:
    """The stored delivery of a run, or None when the run has none."""
    with redis_guard("reading a callback delivery"):
        raw = cast(dict[str, str], r.hgetall(record_key(tenant, model_id, version)))
    if not raw or "webhook_id" not in raw:
        return None
    return Delivery(
        tenant=tenant,
        model_id=model_id,
        version=version,
        webhook_id=raw["webhook_id"],
        url=raw.get("url", ""),
        payload=raw.get("payload", "{}"),
        state=cast(CallbackDeliveryState, raw.get("state", "pending")),
        attempts=int(raw.get("attempts") or 0),
        last_response_code=_opt_int(raw.get("last_response_code")),
        next_attempt_at=_opt_float(raw.get("next_attempt_at")),
    )


def callback_status(
    r: redis.Redis, tenant: str, model_id: str, version: int
) -> CallbackStatus | None:
    """The ``callback`` field of a run's status; None when the run has no delivery."""
    delivery = load(r, tenant, model_id, version)
    if delivery is None:
        return None
    pending = delivery.state == "pending" and delivery.next_attempt_at is not None
    return {
        "state": delivery.state,
        "attempts": delivery.attempts,
        "last_response_code": delivery.last_response_code,
        "next_attempt_at": iso(cast(float, delivery.next_attempt_at)) if pending else None,
    }


def attempt_log(r: redis.Redis, tenant: str, model_id: str, version: int) -> list[dict[str, Any]]:
    """The last attempts of a run's delivery, oldest first."""
    with redis_guard("reading a callback's attempts"):
        entries = cast(list[str], r.lrange(log_key(tenant, model_id, version), 0, -1))
    return [json.loads(entry) for entry in entries]


def enqueue_attempt(celery: Celery, tenant: str, model_id: str, version: int) -> bool:
    """Send one attempt to the callbacks queue; False (logged) when the broker refuses."""
    try:
        celery.send_task(
            TASK_DELIVER_CALLBACK,
            kwargs={"tenant": tenant, "model_id": model_id, "version": version},
            queue=QUEUE_CALLBACKS,
            # A message older than the lease is superseded by the scan's next one.
            expires=ATTEMPT_LEASE,
        )
    except Exception as exc:  # kombu raises assorted connection errors
        log.warning(
            "could not enqueue callback attempt for %s/%s v%d (%s); the scan will retry",
            tenant, model_id, version, type(exc).__name__,
        )
        return False
    return True


def schedule_for_run(
    r: redis.Redis,
    celery: Celery,
    tenant: str,
    model_id: str,
    version: int,
    callback_url: str,
    status: RunStatus,
) -> None:
    """Record one delivery for a finished run (idempotent per run) and enqueue its first try."""
    if not callback_url:
        return
    now = time.time()
    body: dict[str, Any] = dict(status)
    # The body is the status at the end of the run; identical on every attempt.
    body["callback"] = {
        "state": "pending",
        "attempts": 0,
        "last_response_code": None,
        "next_attempt_at": iso(now),
    }
    fields = {
        "webhook_id": f"msg_{uuid.uuid4().hex}",
        "url": callback_url,
        "payload": json.dumps(body, separators=(",", ":")),
        "state": "pending",
        "attempts": "0",
        "last_response_code": "",
        "last_error": "",
        "next_attempt_at": repr(now),
        "created_at": repr(now),
    }
    flat = [item for pair in fields.items() for item in pair]
    member = schedule_member(tenant, model_id, version)
    with redis_guard("recording a callback delivery"):
        created = r.eval(
            _CREATE, 2, record_key(tenant, model_id, version), SCHEDULE_KEY,
            member, repr(now + ATTEMPT_LEASE), *flat,
        )
    if not created:
        log.info("callback for %s/%s v%d already recorded", tenant, model_id, version)
        return
    log.info("callback %s recorded for %s/%s v%d", fields["webhook_id"], tenant, model_id,
             version)
    enqueue_attempt(celery, tenant, model_id, version)


def claim_due(
    r: redis.Redis, now: float | None = None, limit: int = SCAN_BATCH
) -> list[tuple[str, str, int]]:
    """Atomically take the deliveries due by ``now`` (each claimer gets distinct ones)."""
    moment = time.time() if now is None else now
    with redis_guard("claiming due callbacks"):
        members = cast(
            list[str],
            r.eval(_CLAIM, 1, SCHEDULE_KEY, repr(moment), repr(moment + ATTEMPT_LEASE),
                   str(limit)),
        )
    claimed = []
    for member in members:
        parsed = parse_member(member)
        if parsed is None:
            r.zrem(SCHEDULE_KEY, member)
            continue
        claimed.append(parsed)
    return claimed


def enqueue_due(r: redis.Redis, celery: Celery, now: float | None = None) -> int:
    """Claim every due delivery and enqueue one attempt each; returns how many were sent."""
    sent = 0
    for tenant, model_id, version in claim_due(r, now):
        if enqueue_attempt(celery, tenant, model_id, version):
            sent += 1
        else:
            # Leave it for the next scan rather than a whole lease later.
            r.zadd(SCHEDULE_KEY, {schedule_member(tenant, model_id, version): time.time()})
    return sent


def retry_delay(
    attempts_done: int,
    delays: tuple[float, ...],
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt after ``attempts_done`` attempts; None when none is left."""
    index = attempts_done - 1
    if index < 0 or index >= len(delays):
        return None
    draw = (rng or random).uniform(1 - JITTER, 1 + JITTER)
    delay = delays[index] * draw
    if retry_after is not None and retry_after > delay:
        delay = min(retry_after, MAX_RETRY_AFTER)
    return delay


def finish_attempt(
    r: redis.Redis,
    delivery: Delivery,
    record: AttemptRecord,
    state: CallbackDeliveryState,
    next_attempt_at: float | None,
    error: str | None = None,
) -> None:
    """Store an attempt's result and move the schedule on, in one transaction."""
    key = record_key(delivery.tenant, delivery.model_id, delivery.version)
    lkey = log_key(delivery.tenant, delivery.model_id, delivery.version)
    member = schedule_member(delivery.tenant, delivery.model_id, delivery.version)
    code = record.response_code
    with redis_guard("recording a callback attempt"):
        pipe = r.pipeline(transaction=True)
        pipe.hset(key, mapping={
            "state": state,
            "attempts": str(record.attempt),
            "last_response_code": "" if code is None else str(code),
            "last_error": error or "",
            "next_attempt_at": "" if next_attempt_at is None else repr(next_attempt_at),
            "updated_at": repr(record.at),
        })
        pipe.rpush(lkey, json.dumps(record.as_dict(), separators=(",", ":")))
        pipe.ltrim(lkey, -MAX_LOG_ENTRIES, -1)
        if next_attempt_at is None:
            pipe.zrem(SCHEDULE_KEY, member)
        else:
            pipe.zadd(SCHEDULE_KEY, {member: next_attempt_at})
        pipe.execute()


def drop_from_schedule(r: redis.Redis, tenant: str, model_id: str, version: int) -> None:
    """Forget a schedule entry whose delivery is gone or already ended."""
    with redis_guard("updating the callback schedule"):
        r.zrem(SCHEDULE_KEY, schedule_member(tenant, model_id, version))
