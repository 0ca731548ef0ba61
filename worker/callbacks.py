"""Callback delivery: one signed POST per attempt, and the periodic scan that sends due ones.

An attempt (task :data:`~shared.contracts.TASK_DELIVER_CALLBACK`, on the
callbacks queue) takes the delivery's lock, checks the delivery is still
pending and due, signs the stored body with the tenant's current secret, and with the
previous one during a rotation's grace period (``standardwebhooks``, so any
Standard Webhooks library verifies it), and
POSTs it through :func:`shared.webhooks.url_policy.delivery_session` (address checked after
DNS, pinned, no redirects, no proxies). A 2xx ends the delivery as
delivered; 408, 429, 5xx, connection errors and timeouts schedule the next
attempt in :mod:`shared.webhooks.deliveries`; any other status (3xx included, since
redirects are never followed) and a forbidden address end it as failed.
The scan (:data:`~shared.contracts.TASK_SCAN_CALLBACKS`, run by beat every
5 s) enqueues the attempts that have come due.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit

import redis
import requests
from billiard.exceptions import SoftTimeLimitExceeded
from redis.exceptions import LockError
from standardwebhooks import Webhook

from shared.config import Settings
from shared.contracts import TASK_DELIVER_CALLBACK, TASK_SCAN_CALLBACKS, CallbackDeliveryState
from shared.errors import ServiceError
from shared.metrics import record_delivery
from shared.webhooks.deliveries import (
    LOCK_TTL,
    AttemptRecord,
    Delivery,
    drop_from_schedule,
    enqueue_due,
    finish_attempt,
    load,
    lock_key,
    retry_delay,
)
from shared.webhooks.secrets import signing_secrets
from shared.webhooks.url_policy import ForbiddenAddress, delivery_session
from worker.celery_app import app
from worker.context import worker_services

log = logging.getLogger(__name__)

#: An attempt's own time limits (seconds): above connect + read timeout, below LOCK_TTL.
SOFT_TIME_LIMIT = 60
HARD_TIME_LIMIT = 75
#: Bytes of a receiver's response body read at most; the rest is dropped with the connection.
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "recsys-webhooks/1.0"

Outcome = Literal["delivered", "retry", "failed"]


@dataclass(frozen=True)
class SendResult:
    """What the receiver did with one POST."""

    response_code: int | None
    error: str | None
    retry_after: float | None
    duration_ms: int
    permanent: bool = False


def classify(result: SendResult) -> Outcome:
    """2xx delivered; 408, 429, 5xx and network failures retried; anything else failed."""
    code = result.response_code
    if code is None:
        return "failed" if result.permanent else "retry"
    if 200 <= code < 300:
        return "delivered"
    if code in (408, 429) or code >= 500:
        return "retry"
    return "failed"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def redacted(url: str) -> str:
    """Scheme, host and port only: paths and queries often carry receiver tokens."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
    except ValueError:
        return "<unparseable url>"


def _drain(response: requests.Response) -> None:
    """Read at most MAX_RESPONSE_BYTES of the body; its content does not matter."""
    read = 0
    try:
        for chunk in response.iter_content(chunk_size=8192):
            read += len(chunk)
            if read >= MAX_RESPONSE_BYTES:
                break
    except (requests.RequestException, OSError):
        pass  # the status line already decided the outcome


def send_webhook(delivery: Delivery, secret: str | Sequence[str], settings: Settings
                 ) -> SendResult:
    """POST the delivery's body, signed per Standard Webhooks, and report what came back.

    With several secrets (a rotation's grace period) the ``webhook-signature`` header
    carries one ``v1,<signature>`` per secret, space-separated, as the scheme allows.
    """
    moment = datetime.now(UTC)
    keys = [secret] if isinstance(secret, str) else list(secret)
    headers = {
        "Content-Type": "application/json",
        "webhook-id": delivery.webhook_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": " ".join(
            Webhook(key).sign(delivery.webhook_id, moment, delivery.payload) for key in keys),
    }
    timeout = (settings.callback_connect_timeout, settings.callback_read_timeout)
    started = time.monotonic()
    code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    permanent = False
    try:
        with delivery_session(settings.callback_allow_private, *timeout, USER_AGENT) as session:
            response = session.post(
                delivery.url,
                data=delivery.payload.encode("utf-8"),
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
                stream=True,
            )
            try:
                code = response.status_code
                if code in (429, 503):
                    retry_after = parse_retry_after(response.headers.get("Retry-After"),
                                                    time.time())
                _drain(response)
            finally:
                response.close()
    except ForbiddenAddress:
        error, permanent = "ForbiddenAddress", True
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema) as exc:
        error, permanent = type(exc).__name__, True
    except (requests.RequestException, OSError) as exc:
        error = type(exc).__name__
    except SoftTimeLimitExceeded:
        error = "AttemptTimeLimit"
    duration_ms = int((time.monotonic() - started) * 1000)
    return SendResult(code, error, retry_after, duration_ms, permanent)


def run_attempt(r: redis.Redis, settings: Settings, tenant: str, model_id: str,
                version: int) -> Outcome | None:
    """Make the delivery's next attempt if it is due and no other attempt is sending.

    Returns the outcome, or None when nothing was sent (not due, ended, or locked).
    """
    delivery = load(r, tenant, model_id, version)
    if delivery is None or delivery.state != "pending":
        drop_from_schedule(r, tenant, model_id, version)
        return None
    if not delivery.is_due(time.time()):
        return None
    lock = r.lock(lock_key(tenant, model_id, version), timeout=LOCK_TTL, blocking=False)
    if not lock.acquire(blocking=False):
        log.info("callback %s: another attempt is sending; skipped", delivery.webhook_id)
        return None
    try:
        # Re-read under the lock: an attempt that just ended may have moved it on.
        delivery = load(r, tenant, model_id, version)
        if delivery is None or not delivery.is_due(time.time()):
            return None
        return _attempt(r, settings, delivery)
    finally:
        try:
            lock.release()
        except LockError:
            log.warning("callback lock for %s/%s v%d expired during an attempt",
                        tenant, model_id, version)


def _attempt(r: redis.Redis, settings: Settings, delivery: Delivery) -> Outcome:
    result = send_webhook(delivery, signing_secrets(r, delivery.tenant), settings)
    outcome = classify(result)
    number = delivery.attempts + 1
    finished = time.time()
    next_at: float | None = None
    state: CallbackDeliveryState = "delivered" if outcome == "delivered" else "failed"
    if outcome == "retry":
        delay = retry_delay(number, settings.callback_retry_delays, result.retry_after)
        if delay is None:
            outcome = "failed"
        else:
            state, next_at = "pending", finished + delay
    record = AttemptRecord(
        attempt=number,
        at=finished,
        response_code=result.response_code,
        error=result.error,
        duration_ms=result.duration_ms,
        outcome=outcome,
    )
    finish_attempt(r, delivery, record, state, next_at, result.error)
    record_delivery(r, outcome)
    log.info(
        "callback %s attempt %d for %s/%s v%d to %s: %s in %d ms -> %s%s",
        delivery.webhook_id, number, delivery.tenant, delivery.model_id, delivery.version,
        redacted(delivery.url),
        result.response_code if result.response_code is not None else result.error,
        result.duration_ms, state,
        f" (next in {next_at - finished:.1f} s)" if next_at is not None else "",
    )
    return outcome


@app.task(name=TASK_DELIVER_CALLBACK, ignore_result=True,
          soft_time_limit=SOFT_TIME_LIMIT, time_limit=HARD_TIME_LIMIT)
def deliver_callback(tenant: str, model_id: str, version: int) -> None:
    """One attempt at a run's webhook (skipped when not due or already sending)."""
    svc = worker_services(app)
    try:
        run_attempt(svc.redis, svc.settings, tenant, model_id, int(version))
    except ServiceError as exc:
        # Redis is down: the schedule's lease brings this attempt back later.
        log.warning("callback attempt for %s/%s v%s not made: %s", tenant, model_id,
                    version, exc.message)


@app.task(name=TASK_SCAN_CALLBACKS, ignore_result=True, send_events=False)  # not in Flower
def scan_callbacks() -> int:
    """Enqueue an attempt for every delivery that has come due; returns how many."""
    svc = worker_services(app)
    try:
        return enqueue_due(svc.redis, svc.celery)
    except ServiceError as exc:
        log.warning("callback scan skipped: %s", exc.message)
        return 0
