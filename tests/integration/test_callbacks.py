"""Callbacks end to end: a real prefork worker delivers to a real receiver, driven by the scan.

The module restarts the stack's worker with a fast retry schedule, and a
beat stand-in thread sends the real scan task every 0.3 s (as beat does
every 5 s in production).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from celery import Celery

from shared.contracts import QUEUE_CALLBACKS, TASK_SCAN_CALLBACKS, CallbackStatus, RunStatus
from shared.queue import make_producer
from shared.webhooks.deliveries import (
    SCHEDULE_KEY,
    attempt_log,
    callback_status,
    lock_key,
    schedule_member,
)
from shared.webhooks.deliveries import schedule_for_run as schedule
from tests.helpers.callback_receiver import Receiver, Reply, receiving
from tests.helpers.servers import free_port
from tests.helpers.stack import Stack
from tests.helpers.waiting import holds_until, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.own_stack]  # restarts its worker

TENANT = "default"


def scans_ran(cb: Stack, times: int = 2) -> Callable[[], bool]:
    """A condition true once the scan has run ``times`` more times, each with its attempts.

    Each round plants a due schedule entry for a delivery that has no record: only a scan
    claims it, and only the attempt that scan enqueues (finding no record) drops it again.
    So a round that ends proves a scan ran and the attempts it sent were made.
    """
    member = schedule_member(TENANT, "cb-scan-probe", 1)
    left = [times]

    def done() -> bool:
        if cb.redis.zscore(SCHEDULE_KEY, member) is not None:
            return False
        if left[0] == 0:
            return True
        left[0] -= 1
        cb.redis.zadd(SCHEDULE_KEY, {member: 0})
        return False

    return done


@pytest.fixture(scope="module")
def cb(stack: Stack) -> Iterator[Stack]:
    """The stack's worker, restarted with short callback retries and a 1 s read timeout."""
    for proc in list(stack.workers):
        stack.stop_worker(proc, signal.SIGKILL)
    stack.env["RECSYS_CALLBACK_RETRY_DELAYS"] = "0.5,0.5,1,1,2,2,4,4"
    stack.env["RECSYS_CALLBACK_READ_TIMEOUT"] = "1"
    stack.start_worker()
    yield stack


@pytest.fixture(scope="module")
def client(cb: Stack) -> Celery:
    """A Celery client, as the training task's result hook has."""
    return make_producer(cb.settings)


@pytest.fixture(scope="module", autouse=True)
def beat(client: Celery) -> Iterator[None]:
    """Send the scan task the way beat does, only faster."""
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.3):
            try:
                client.send_task(TASK_SCAN_CALLBACKS, queue=QUEUE_CALLBACKS, expires=2)
            except Exception:  # noqa: S112 (a broker hiccup just skips a tick)
                continue

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as rec:
        yield rec


def finished(model_id: str, state: str = "completed") -> RunStatus:
    """The status object of a run that just ended."""
    return {
        "model_id": model_id, "version": 1, "start_timestamp": "2026-01-01T00:00:00Z",
        "end_timestamp": "2026-01-01T00:02:00Z", "status": state,  # type: ignore[typeddict-item]
        "phase": "done" if state == "completed" else "failed",
        "message": "Training completed." if state == "completed" else "No interactions.",
        "progress": 100 if state == "completed" else 10, "data_batch_ids": ["b1"],
        "counts": None, "metrics": None, "callback": None,
    }


def secret_of(cb: Stack, http: requests.Session) -> str:
    response = http.get(cb.url("/webhook_secret"), headers=cb.headers(), timeout=10)
    assert response.status_code == 200
    secret: str = response.json()["secret"]
    return secret


def ended(cb: Stack, model_id: str, state: str) -> Callable[[], CallbackStatus | None]:
    def probe() -> CallbackStatus | None:
        shown = callback_status(cb.redis, TENANT, model_id, 1)
        return shown if shown is not None and shown["state"] == state else None

    return probe


def test_delivered_once_and_verified(
    cb: Stack, client: Celery, receiver: Receiver, http: requests.Session
) -> None:
    secret = secret_of(cb, http)

    # A training task delivered twice schedules twice: still one webhook.
    schedule(cb.redis, client, TENANT, "cb-first", 1, receiver.url(), finished("cb-first"))
    schedule(cb.redis, client, TENANT, "cb-first", 1, receiver.url(), finished("cb-first"))

    (request,) = receiver.wait_for(1)
    body = request.verify(secret)
    assert body["model_id"] == "cb-first" and body["status"] == "completed"
    shown = wait_until(ended(cb, "cb-first", "delivered"), what="delivered")
    assert shown == {"state": "delivered", "attempts": 1, "last_response_code": 200,
                     "next_attempt_at": None}
    holds_until(lambda: len(receiver.requests) == 1, scans_ran(cb), what="one request")


def test_500_then_200_retried_by_the_scan_with_the_same_id(
    cb: Stack, client: Celery, receiver: Receiver, http: requests.Session
) -> None:
    secret = secret_of(cb, http)
    receiver.reply(Reply(500))

    schedule(cb.redis, client, TENANT, "cb-500", 1, receiver.url(), finished("cb-500"))

    first, second = receiver.wait_for(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.verify(secret) == second.verify(secret)
    assert second.at - first.at < 30
    shown = wait_until(ended(cb, "cb-500", "delivered"), what="delivered")
    assert shown["attempts"] == 2 and shown["last_response_code"] == 200
    assert [e["response_code"] for e in attempt_log(cb.redis, TENANT, "cb-500", 1)] == [500, 200]


def test_slow_receiver_times_out_and_is_retried(
    cb: Stack, client: Celery, receiver: Receiver
) -> None:
    receiver.reply(Reply(200, delay=3.0))

    schedule(cb.redis, client, TENANT, "cb-slow", 1, receiver.url(), finished("cb-slow"))

    receiver.wait_for(2)
    wait_until(ended(cb, "cb-slow", "delivered"), what="delivered")
    log = attempt_log(cb.redis, TENANT, "cb-slow", 1)
    assert log[0]["error"] == "ReadTimeout" and log[0]["duration_ms"] < 2900


def test_410_ends_as_failed_after_one_attempt(
    cb: Stack, client: Celery, receiver: Receiver
) -> None:
    receiver.reply(Reply(410))

    schedule(cb.redis, client, TENANT, "cb-410", 1, receiver.url(), finished("cb-410"))

    shown = wait_until(ended(cb, "cb-410", "failed"), what="failed")
    assert shown == {"state": "failed", "attempts": 1, "last_response_code": 410,
                     "next_attempt_at": None}
    holds_until(lambda: len(receiver.requests) == 1, scans_ran(cb), what="one request")


def test_connection_refused_then_recovering(cb: Stack, client: Celery) -> None:
    port = free_port()

    schedule(cb.redis, client, TENANT, "cb-refused", 1, f"http://127.0.0.1:{port}/hook",
             finished("cb-refused"))
    wait_until(lambda: len(attempt_log(cb.redis, TENANT, "cb-refused", 1)) >= 1,
               what="a refused attempt")
    with receiving(port) as late:
        late.wait_for(1)
        wait_until(ended(cb, "cb-refused", "delivered"), what="delivered")

    assert attempt_log(cb.redis, TENANT, "cb-refused", 1)[0]["error"] == "ConnectionError"


def test_the_schedule_survives_a_worker_restart(
    cb: Stack, client: Celery, receiver: Receiver, http: requests.Session
) -> None:
    secret = secret_of(cb, http)
    receiver.reply(Reply(503, {"Retry-After": "3"}))
    schedule(cb.redis, client, TENANT, "cb-restart", 1, receiver.url(), finished("cb-restart"))
    receiver.wait_for(1)
    # The restart comes between attempts: the first one has recorded its result and let go
    # of the delivery's lock (a worker killed while holding it delays the retry by the lock's
    # lifetime, 90 s, by design).
    wait_until(lambda: len(attempt_log(cb.redis, TENANT, "cb-restart", 1)) >= 1
               and not cb.redis.exists(lock_key(TENANT, "cb-restart", 1)),
               what="the first attempt recorded and its lock released")

    for proc in list(cb.workers):
        cb.stop_worker(proc, signal.SIGKILL)
    assert cb.redis.zscore(SCHEDULE_KEY, schedule_member(TENANT, "cb-restart", 1)) is not None
    restarted_at = time.time()
    cb.start_worker()

    _, retry = receiver.wait_for(2, timeout=30)
    assert retry.at >= restarted_at
    retry.verify(secret)
    shown = wait_until(ended(cb, "cb-restart", "delivered"), what="delivered")
    assert shown["attempts"] == 2


def _status(cb: Stack, http: requests.Session, model_id: str) -> dict[str, Any]:
    response = http.get(cb.url(f"/status/{model_id}"), headers=cb.headers(), timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_failed_run_sends_its_error_callback_and_status_shows_it(
    cb: Stack, receiver: Receiver, http: requests.Session
) -> None:
    secret = secret_of(cb, http)

    response = http.post(
        cb.url("/train"), headers=cb.headers(), timeout=10,
        json={"model_id": "cb-e2e-fail", "data_tags": ["cb-no-such-tag"],
              "callback_url": receiver.url("/done?run=e2e")},
    )

    assert response.status_code == 202, response.text
    (request,) = receiver.wait_for(1, timeout=40)
    body = request.verify(secret)
    assert request.path == "/done?run=e2e"
    assert body["model_id"] == "cb-e2e-fail"
    assert body["status"] == "error" and body["end_timestamp"] is not None
    assert body["message"]
    shown = wait_until(
        lambda: (s := _status(cb, http, "cb-e2e-fail"))["callback"]["state"] == "delivered" and s,
        what="status showing the delivery",
    )
    assert shown["callback"]["attempts"] == 1
    assert shown["callback"]["last_response_code"] == 200


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://x", "http://user@127.0.0.1/"])
def test_train_refuses_a_forbidden_callback_url(
    cb: Stack, http: requests.Session, url: str
) -> None:
    response = http.post(cb.url("/train"), headers=cb.headers(), timeout=10,
                         json={"model_id": "cb-refused-url", "callback_url": url})

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "callback_url_forbidden"
