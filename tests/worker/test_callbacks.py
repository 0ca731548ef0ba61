"""One delivery attempt against a real HTTP receiver on 127.0.0.1 (Redis is fakeredis)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import fakeredis
import pytest
import requests
from billiard.exceptions import SoftTimeLimitExceeded
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared.config import Settings
from shared.contracts import RunStatus
from shared.metrics import DELIVERIES_KEY
from shared.webhooks.deliveries import (
    SCHEDULE_KEY,
    attempt_log,
    callback_status,
    load,
    schedule_member,
)
from shared.webhooks.deliveries import schedule_for_run as schedule
from shared.webhooks.secrets import get_secret, rotate
from tests.helpers.callback_receiver import Receiver, Reply, receiving
from tests.helpers.servers import free_port
from worker.callbacks import (
    SendResult,
    classify,
    parse_retry_after,
    redacted,
    run_attempt,
)


class NoCelery:
    """The first attempt is made by the test itself."""

    def send_task(self, name: str, **options: Any) -> None:
        pass


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Settings with short timeouts and retries that are due at once."""
    return replace(settings, callback_connect_timeout=1.0, callback_read_timeout=0.5,
                   callback_retry_delays=(0.0, 0.0, 0.0))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as rec:
        yield rec


def run_status(model_id: str, state: str = "completed") -> RunStatus:
    """A finished run's status."""
    return {
        "model_id": model_id, "version": 1, "start_timestamp": "2026-01-01T00:00:00Z",
        "end_timestamp": "2026-01-01T00:01:00Z", "status": state,  # type: ignore[typeddict-item]
        "phase": "done", "message": "done", "progress": 100, "data_batch_ids": ["b"],
        "counts": None, "metrics": None, "callback": None,
    }


def scheduled(r: fakeredis.FakeRedis, url: str, model_id: str = "m") -> None:
    schedule(r, NoCelery(), "acme", model_id, 1, url, run_status(model_id))  # type: ignore[arg-type]


def attempt(r: fakeredis.FakeRedis, s: Settings, model_id: str = "m") -> str | None:
    return run_attempt(r, s, "acme", model_id, 1)


def test_delivered_on_first_try_with_a_verifiable_signature(
    fake_redis: fakeredis.FakeRedis, fast: Settings, receiver: Receiver
) -> None:
    scheduled(fake_redis, receiver.url("/hook?token=abc"))

    assert attempt(fake_redis, fast) == "delivered"

    (request,) = receiver.requests
    assert request.path == "/hook?token=abc"
    assert request.headers["Content-Type"] == "application/json"
    body = request.verify(get_secret(fake_redis, "acme"))
    assert body["model_id"] == "m" and body["status"] == "completed"
    assert request.headers["webhook-id"].startswith("msg_")
    assert callback_status(fake_redis, "acme", "m", 1) == {
        "state": "delivered", "attempts": 1, "last_response_code": 200, "next_attempt_at": None}
    assert fake_redis.zscore(SCHEDULE_KEY, schedule_member("acme", "m", 1)) is None
    (entry,) = attempt_log(fake_redis, "acme", "m", 1)
    assert entry["outcome"] == "delivered" and entry["response_code"] == 200
    # Delivered is final: another attempt message sends nothing.
    assert attempt(fake_redis, fast) is None
    assert len(receiver.requests) == 1


def test_500_then_200_retries_with_the_same_webhook_id(
    fake_redis: fakeredis.FakeRedis, fast: Settings, receiver: Receiver
) -> None:
    receiver.reply(Reply(500))
    scheduled(fake_redis, receiver.url())

    assert attempt(fake_redis, fast) == "retry"
    shown = callback_status(fake_redis, "acme", "m", 1)
    assert shown is not None and shown["state"] == "pending"
    assert shown["attempts"] == 1 and shown["last_response_code"] == 500
    assert shown["next_attempt_at"] is not None
    assert attempt(fake_redis, fast) == "delivered"

    first, second = receiver.requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    secret = get_secret(fake_redis, "acme")
    assert first.verify(secret) == second.verify(secret)
    assert callback_status(fake_redis, "acme", "m", 1) == {
        "state": "delivered", "attempts": 2, "last_response_code": 200, "next_attempt_at": None}


def test_a_receiver_slower_than_the_read_timeout_is_retried(
    fake_redis: fakeredis.FakeRedis, fast: Settings, receiver: Receiver
) -> None:
    receiver.reply(Reply(200, delay=2.0))
    scheduled(fake_redis, receiver.url())

    started = time.monotonic()
    assert attempt(fake_redis, fast) == "retry"
    assert time.monotonic() - started < 1.8
    assert attempt_log(fake_redis, "acme", "m", 1)[0]["error"] == "ReadTimeout"
    assert attempt(fake_redis, fast) == "delivered"
    assert len(receiver.requests) == 2


def test_410_fails_after_one_attempt(
    fake_redis: fakeredis.FakeRedis, fast: Settings, receiver: Receiver
) -> None:
    receiver.reply(Reply(410))
    scheduled(fake_redis, receiver.url())

    assert attempt(fake_redis, fast) == "failed"
    assert attempt(fake_redis, fast) is None

    assert len(receiver.requests) == 1
    assert callback_status(fake_redis, "acme", "m", 1) == {
        "state": "failed", "attempts": 1, "last_response_code": 410, "next_attempt_at": None}
    assert fake_redis.zscore(SCHEDULE_KEY, schedule_member("acme", "m", 1)) is None


def test_redirects_are_not_followed(
    fake_redis: fakeredis.FakeRedis, fast: Settings, receiver: Receiver
) -> None:
    with receiving() as elsewhere:
        receiver.reply(Reply(301, {"Location": "http://169.254.169.254/latest/meta-data/"}),
                       Reply(302, {"Location": elsewhere.url("/stolen")}))
        scheduled(fake_redis, receiver.url(), "m1")
        scheduled(fake_redis, receiver.url(), "m2")

        assert attempt(fake_redis, fast, "m1") == "failed"
        assert attempt(fake_redis, fast, "m2") == "failed"

        assert elsewhere.requests == []
    assert len(receiver.requests) == 2
    shown = callback_status(fake_redis, "acme", "m1", 1)
    assert shown is not None and shown["last_response_code"] == 301


def test_connection_refused_then_recovering(
    fake_redis: fakeredis.FakeRedis, fast: Settings
) -> None:
    port = free_port()
    scheduled(fake_redis, f"http://127.0.0.1:{port}/hook")

    assert attempt(fake_redis, fast) == "retry"
    assert attempt_log(fake_redis, "acme", "m", 1)[0]["error"] == "ConnectionError"
    with receiving(port) as receiver:
        assert attempt(fake_redis, fast) == "delivered"
        assert len(receiver.requests) == 1


def test_retries_end_as_failed_when_the_schedule_runs_out(
    fake_redis: fakeredis.FakeRedis, fast: Settings
) -> None:
    with receiving(default=Reply(503)) as receiver:
        scheduled(fake_redis, receiver.url())
        outcomes = [attempt(fake_redis, fast) for _ in range(5)]

    # One first attempt plus one retry per configured delay, then nothing more.
    assert outcomes == ["retry", "retry", "retry", "failed", None]
    assert len(receiver.requests) == 4
    assert callback_status(fake_redis, "acme", "m", 1) == {
        "state": "failed", "attempts": 4, "last_response_code": 503, "next_attempt_at": None}


@pytest.mark.parametrize("header", ["120", "http-date"])
def test_retry_after_on_429_is_honoured(
    fake_redis: fakeredis.FakeRedis, fast: Settings, receiver: Receiver, header: str
) -> None:
    if header == "http-date":
        header = format_datetime(datetime.now(UTC) + timedelta(seconds=121), usegmt=True)
    receiver.reply(Reply(429, {"Retry-After": header}))
    scheduled(fake_redis, receiver.url())

    assert attempt(fake_redis, fast) == "retry"

    delivery = load(fake_redis, "acme", "m", 1)
    assert delivery is not None and delivery.next_attempt_at is not None
    assert 110 < delivery.next_attempt_at - time.time() <= 122
    # Not due yet: an early attempt message sends nothing.
    assert attempt(fake_redis, fast) is None
    assert len(receiver.requests) == 1


def test_two_concurrent_attempts_send_once(
    fake_redis: fakeredis.FakeRedis, fast: Settings, receiver: Receiver
) -> None:
    receiver.reply(Reply(200, delay=0.3))
    scheduled(fake_redis, receiver.url())
    results: list[str | None] = []

    threads = [threading.Thread(target=lambda: results.append(attempt(fake_redis, fast)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results, key=str) == [None, "delivered"]
    assert len(receiver.requests) == 1


def test_private_addresses_are_refused_at_attempt_time(
    fake_redis: fakeredis.FakeRedis, fast: Settings, receiver: Receiver
) -> None:
    # The URL passed at submit time, but now resolves to a forbidden address (say DNS rebinding).
    scheduled(fake_redis, receiver.url().replace("127.0.0.1", "localhost"))

    assert attempt(fake_redis, replace(fast, callback_allow_private=False)) == "failed"

    assert receiver.requests == []
    assert attempt_log(fake_redis, "acme", "m", 1)[0]["error"] == "ForbiddenAddress"


def test_rotation_changes_the_signing_secret(
    fake_redis: fakeredis.FakeRedis, fast: Settings, receiver: Receiver
) -> None:
    receiver.reply(Reply(500))
    old = get_secret(fake_redis, "acme")
    scheduled(fake_redis, receiver.url())
    attempt(fake_redis, fast)

    new = rotate(fake_redis, "acme")
    attempt(fake_redis, fast)

    first, second = receiver.requests
    first.verify(old)
    second.verify(new)
    with pytest.raises(WebhookVerificationError):
        second.verify(old)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(second.body, {**second.headers, "webhook-id": "msg_forged"})


def test_a_huge_response_body_is_not_read_whole(
    fake_redis: fakeredis.FakeRedis, fast: Settings
) -> None:
    with receiving(default=Reply(200, body=b"x" * (20 << 20))) as receiver:
        scheduled(fake_redis, receiver.url())
        started = time.monotonic()
        assert attempt(fake_redis, fast) == "delivered"
    assert time.monotonic() - started < 5


def test_classification() -> None:
    def result(code: int | None, permanent: bool = False) -> SendResult:
        return SendResult(code, None if code else "ConnectTimeout", None, 1, permanent)

    assert [classify(result(c)) for c in (200, 201, 204, 299)] == ["delivered"] * 4
    assert [classify(result(c)) for c in (408, 429, 500, 502, 503, 504)] == ["retry"] * 6
    assert [classify(result(c)) for c in (301, 302, 304, 400, 401, 404, 410, 422)] == (
        ["failed"] * 8)
    assert classify(result(None)) == "retry"
    assert classify(result(None, permanent=True)) == "failed"


def test_retry_after_parsing() -> None:
    now = time.time()
    future = format_datetime(datetime.fromtimestamp(now + 60, UTC), usegmt=True)

    assert parse_retry_after("30", now) == 30.0
    assert parse_retry_after(future, now) == pytest.approx(60, abs=1.5)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_logged_urls_keep_no_path_or_query() -> None:
    assert redacted("https://h.example:8443/hooks/T0/secret?token=abc") == (
        "https://h.example:8443")


def test_attempts_are_counted_for_metrics(
    fake_redis: fakeredis.FakeRedis, fast: Settings, receiver: Receiver
) -> None:
    receiver.reply(Reply(502))
    scheduled(fake_redis, receiver.url())

    attempt(fake_redis, fast)
    attempt(fake_redis, fast)

    counts = fake_redis.hgetall(DELIVERIES_KEY)
    assert counts["count:retry"] == "1" and counts["count:delivered"] == "1"


def test_an_entry_without_a_delivery_is_dropped(
    fake_redis: fakeredis.FakeRedis, fast: Settings
) -> None:
    fake_redis.zadd(SCHEDULE_KEY, {schedule_member("acme", "gone", 1): time.time()})

    assert run_attempt(fake_redis, fast, "acme", "gone", 1) is None

    assert fake_redis.zscore(SCHEDULE_KEY, schedule_member("acme", "gone", 1)) is None


def test_an_attempt_cut_by_its_time_limit_is_retried(
    fake_redis: fakeredis.FakeRedis, fast: Settings, receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def too_slow(*args: Any, **kwargs: Any) -> None:
        raise SoftTimeLimitExceeded()

    scheduled(fake_redis, receiver.url())
    monkeypatch.setattr(requests.Session, "post", too_slow)

    assert attempt(fake_redis, fast) == "retry"
    assert attempt_log(fake_redis, "acme", "m", 1)[0]["error"] == "AttemptTimeLimit"
