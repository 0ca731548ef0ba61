"""The delivery record and its persisted retry schedule (no broker: a recording Celery stand-in)."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import fakeredis
import pytest
from celery import Celery

from shared.contracts import QUEUE_CALLBACKS, TASK_DELIVER_CALLBACK, RunStatus
from shared.webhooks import deliveries
from shared.webhooks.deliveries import (
    ATTEMPT_LEASE,
    MAX_LOG_ENTRIES,
    SCHEDULE_KEY,
    AttemptRecord,
    attempt_log,
    callback_status,
    claim_due,
    enqueue_due,
    finish_attempt,
    load,
    retry_delay,
    schedule_for_run,
)

DELAYS = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


class RecordingCelery:
    """Stands in for the Celery client: records send_task calls, or fails like a dead broker."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail = fail

    def send_task(self, name: str, **options: Any) -> None:
        if self.fail:
            raise ConnectionRefusedError("broker down")
        self.sent.append({"name": name, **options})


def status(model_id: str = "m1", version: int = 1, state: str = "completed") -> RunStatus:
    """A finished run's status object."""
    return {
        "model_id": model_id,
        "version": version,
        "start_timestamp": "2026-01-01T00:00:00Z",
        "end_timestamp": "2026-01-01T00:05:00Z",
        "status": state,  # type: ignore[typeddict-item]
        "phase": "done" if state == "completed" else "failed",
        "message": "Training completed.",
        "progress": 100,
        "data_batch_ids": ["b1", "b2"],
        "counts": {"entities": 3, "interactions": 10, "sources": 2, "targets": 1},
        "metrics": None,
        "callback": None,
    }


def celery(stub: RecordingCelery) -> Celery:
    return stub  # type: ignore[return-value]


def test_a_finished_run_gets_one_pending_delivery_and_its_first_attempt_enqueued(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    stub = RecordingCelery()

    schedule_for_run(fake_redis, celery(stub), "acme", "m1", 3, "https://h.example/x", status())

    assert stub.sent == [{
        "name": TASK_DELIVER_CALLBACK,
        "kwargs": {"tenant": "acme", "model_id": "m1", "version": 3},
        "queue": QUEUE_CALLBACKS,
        "expires": ATTEMPT_LEASE,
    }]
    shown = callback_status(fake_redis, "acme", "m1", 3)
    assert shown is not None
    assert shown["state"] == "pending" and shown["attempts"] == 0
    assert shown["last_response_code"] is None
    assert shown["next_attempt_at"] is not None and shown["next_attempt_at"].endswith("Z")
    delivery = load(fake_redis, "acme", "m1", 3)
    assert delivery is not None
    assert delivery.webhook_id.startswith("msg_")
    body = json.loads(delivery.payload)
    assert body["model_id"] == "m1" and body["status"] == "completed"
    assert body["data_batch_ids"] == ["b1", "b2"]
    assert body["callback"]["state"] == "pending"


def test_scheduling_twice_keeps_one_delivery_and_one_first_attempt(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    stub = RecordingCelery()
    schedule_for_run(fake_redis, celery(stub), "acme", "m1", 1, "https://h.example/x", status())
    first = load(fake_redis, "acme", "m1", 1)

    schedule_for_run(fake_redis, celery(stub), "acme", "m1", 1, "https://h.example/y",
                     status(state="error"))

    again = load(fake_redis, "acme", "m1", 1)
    assert len(stub.sent) == 1
    assert first == again
    assert fake_redis.zcard(SCHEDULE_KEY) == 1


def test_no_callback_url_means_no_delivery(fake_redis: fakeredis.FakeRedis) -> None:
    stub = RecordingCelery()

    schedule_for_run(fake_redis, celery(stub), "acme", "m1", 1, "", status())

    assert stub.sent == []
    assert callback_status(fake_redis, "acme", "m1", 1) is None


def test_tenants_have_separate_deliveries(fake_redis: fakeredis.FakeRedis) -> None:
    stub = RecordingCelery()

    schedule_for_run(fake_redis, celery(stub), "acme", "m1", 1, "https://a.example/", status())
    schedule_for_run(fake_redis, celery(stub), "globex", "m1", 1, "https://g.example/", status())

    acme, globex = load(fake_redis, "acme", "m1", 1), load(fake_redis, "globex", "m1", 1)
    assert acme is not None and globex is not None
    assert acme.url != globex.url and acme.webhook_id != globex.webhook_id
    assert len(stub.sent) == 2


def test_a_dead_broker_does_not_lose_the_delivery(fake_redis: fakeredis.FakeRedis) -> None:
    schedule_for_run(fake_redis, celery(RecordingCelery(fail=True)), "acme", "m1", 1,
                     "https://h.example/", status())

    # The first attempt's message never left; once its lease runs out the scan sends it.
    assert claim_due(fake_redis, time.time()) == []
    assert claim_due(fake_redis, time.time() + ATTEMPT_LEASE + 1) == [("acme", "m1", 1)]


def test_claims_are_exclusive_and_leased(fake_redis: fakeredis.FakeRedis) -> None:
    now = time.time()
    for version in range(1, 6):
        fake_redis.zadd(SCHEDULE_KEY, {deliveries.schedule_member("acme", "m", version): now - 1})
    fake_redis.zadd(SCHEDULE_KEY, {deliveries.schedule_member("acme", "later", 1): now + 60})

    first = claim_due(fake_redis, now)
    second = claim_due(fake_redis, now)

    assert sorted(v for _, _, v in first) == [1, 2, 3, 4, 5]
    assert second == []
    assert fake_redis.zscore(SCHEDULE_KEY, deliveries.schedule_member("acme", "m", 1)) == (
        pytest.approx(now + ATTEMPT_LEASE)
    )
    # A claimed attempt that never reports back is claimed again after its lease.
    assert len(claim_due(fake_redis, now + ATTEMPT_LEASE + 1)) == 6


def test_enqueue_due_sends_one_attempt_per_due_delivery(fake_redis: fakeredis.FakeRedis) -> None:
    now = time.time()
    fake_redis.zadd(SCHEDULE_KEY, {
        deliveries.schedule_member("acme", "a", 1): now - 5,
        deliveries.schedule_member("globex", "b", 2): now - 1,
        deliveries.schedule_member("acme", "c", 1): now + 100,
        "not json": now - 1,
    })
    stub = RecordingCelery()

    assert enqueue_due(fake_redis, celery(stub), now) == 2

    assert sorted((s["kwargs"]["tenant"], s["kwargs"]["model_id"]) for s in stub.sent) == [
        ("acme", "a"), ("globex", "b")]
    assert fake_redis.zscore(SCHEDULE_KEY, "not json") is None


def test_enqueue_due_with_a_dead_broker_leaves_entries_due(fake_redis: fakeredis.FakeRedis) -> None:
    now = time.time()
    member = deliveries.schedule_member("acme", "a", 1)
    fake_redis.zadd(SCHEDULE_KEY, {member: now - 5})

    assert enqueue_due(fake_redis, celery(RecordingCelery(fail=True)), now) == 0

    assert float(fake_redis.zscore(SCHEDULE_KEY, member) or 0) <= time.time()


def test_retry_delays_follow_the_schedule_with_jitter_and_end() -> None:
    rng = random.Random(7)

    for attempts_done, base in enumerate(DELAYS, start=1):
        for _ in range(20):
            delay = retry_delay(attempts_done, DELAYS, rng=rng)
            assert delay is not None
            assert base * 0.8 <= delay <= base * 1.2
    assert retry_delay(len(DELAYS) + 1, DELAYS) is None
    # First retry within 30 s, the last attempt about a day after the first.
    assert DELAYS[0] * 1.2 < 30
    assert 20 * 3600 < sum(DELAYS) < 30 * 3600


def test_retry_after_wins_only_when_longer_and_is_capped() -> None:
    rng = random.Random(1)

    assert retry_delay(1, DELAYS, retry_after=120.0, rng=rng) == 120.0
    shorter = retry_delay(2, DELAYS, retry_after=1.0, rng=rng)
    assert shorter is not None and shorter >= 300 * 0.8
    assert retry_delay(1, DELAYS, retry_after=10 * 86400.0) == deliveries.MAX_RETRY_AFTER


def _finish(r: fakeredis.FakeRedis, attempt: int, code: int | None,
            next_at: float | None, state: str = "pending") -> None:
    delivery = load(r, "acme", "m1", 1)
    assert delivery is not None
    record = AttemptRecord(attempt, time.time(), code, None if code else "ConnectTimeout", 12,
                           "retry" if state == "pending" else state)
    finish_attempt(r, delivery, record, state, next_at)  # type: ignore[arg-type]


def test_finishing_attempts_updates_status_schedule_and_a_capped_log(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    schedule_for_run(fake_redis, celery(RecordingCelery()), "acme", "m1", 1,
                     "https://h.example/", status())
    member = deliveries.schedule_member("acme", "m1", 1)
    later = time.time() + 300

    _finish(fake_redis, 1, 503, later)

    shown = callback_status(fake_redis, "acme", "m1", 1)
    assert shown == {"state": "pending", "attempts": 1, "last_response_code": 503,
                     "next_attempt_at": deliveries.iso(later)}
    assert fake_redis.zscore(SCHEDULE_KEY, member) == pytest.approx(later)

    for attempt in range(2, 30):
        _finish(fake_redis, attempt, None, later)
    _finish(fake_redis, 30, 204, None, state="delivered")

    shown = callback_status(fake_redis, "acme", "m1", 1)
    assert shown == {"state": "delivered", "attempts": 30, "last_response_code": 204,
                     "next_attempt_at": None}
    assert fake_redis.zscore(SCHEDULE_KEY, member) is None
    entries = attempt_log(fake_redis, "acme", "m1", 1)
    assert len(entries) == MAX_LOG_ENTRIES
    assert entries[-1]["attempt"] == 30 and entries[-1]["response_code"] == 204
    assert entries[0]["error"] == "ConnectTimeout" and entries[0]["duration_ms"] == 12


def test_status_of_a_run_without_delivery_is_none(fake_redis: fakeredis.FakeRedis) -> None:
    assert callback_status(fake_redis, "acme", "nope", 1) is None
    assert attempt_log(fake_redis, "acme", "nope", 1) == []
