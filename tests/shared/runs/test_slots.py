"""The per-tenant training semaphore (fakeredis)."""

from __future__ import annotations

import threading

import fakeredis

from shared.runs import slots
from shared.runs.ending import finish_run
from shared.runs.lifecycle import create_run
from shared.runs.records import get_run
from shared.runs.ref import RunRef


def test_at_most_limit_slots_per_tenant_and_tenants_are_separate(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    assert slots.acquire(fake_redis, "a", "t1", 2, 60)
    assert slots.acquire(fake_redis, "a", "t2", 2, 60)
    assert not slots.acquire(fake_redis, "a", "t3", 2, 60)
    assert slots.acquire(fake_redis, "b", "t4", 2, 60)
    slots.release(fake_redis, "a", "t1")
    assert slots.acquire(fake_redis, "a", "t3", 2, 60)


def test_a_lost_holder_frees_its_slot_when_the_lease_runs_out(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    assert slots.acquire(fake_redis, "a", "dead", 1, 10, now=1000.0)
    assert not slots.acquire(fake_redis, "a", "next", 1, 10, now=1009.0)
    assert slots.acquire(fake_redis, "a", "next", 1, 10, now=1010.5)
    assert slots.holders(fake_redis, "a", now=1010.5) == 1


def test_renewal_keeps_a_slot_and_fails_once_it_was_lost(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    assert slots.acquire(fake_redis, "a", "t1", 1, 60)
    assert slots.renew(fake_redis, "a", "t1", 60)
    slots.release(fake_redis, "a", "t1")
    assert not slots.renew(fake_redis, "a", "t1", 60)


def test_concurrent_takers_never_exceed_the_limit(fake_redis: fakeredis.FakeRedis) -> None:
    won: list[str] = []
    lock = threading.Lock()

    def take(i: int) -> None:
        if slots.acquire(fake_redis, "a", f"t{i}", 3, 60):
            with lock:
                won.append(f"t{i}")

    threads = [threading.Thread(target=take, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 3 and slots.holders(fake_redis, "a") == 3


def test_tenant_slot_renews_while_held_and_releases_after(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    with slots.TenantSlot(fake_redis, "a", 1, lease=0.5, interval=0.1) as slot:
        assert slot.held
        stop = threading.Event()
        stop.wait(1.0)  # twice the lease: only the renewals keep it
        assert not slots.acquire(fake_redis, "a", "other", 1, 60)
    assert slots.holders(fake_redis, "a") == 0
    with slots.TenantSlot(fake_redis, "a", 1, 60, 1) as first, \
            slots.TenantSlot(fake_redis, "a", 1, 60, 1) as second:
        assert first.held and not second.held


def test_a_waiting_run_says_why_and_a_cancelled_one_stops_waiting(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    create_run(fake_redis, "a", "m", {}, None)
    ref = RunRef("a", "m", 1)
    assert slots.note_waiting(fake_redis, ref, 2)
    record = get_run(fake_redis, "a", "m", 1)
    assert record is not None and record["phase"] == "queued"
    assert "RECSYS_TENANT_CONCURRENCY" in record["message"] and "2" in record["message"]
    finish_run(fake_redis, None, ref, phase="cancelled", message="Cancelled on request.")
    assert not slots.note_waiting(fake_redis, ref, 2)
    assert not slots.note_waiting(fake_redis, RunRef("a", "gone", 1), 2)
