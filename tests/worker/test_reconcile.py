"""The reconciler on fakeredis: stale runs are requeued, then given up after the attempt cap."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from shared.config import Settings
from shared.runs.ending import request_cancel
from shared.runs.lifecycle import create_run, start_attempt
from shared.runs.records import get_status
from shared.runs.ref import RunRef
from shared.storage import Storage
from worker.context import WorkerServices
from worker.reconcile import reconcile

T = "acme"


class FakeCelery:
    """Records send_task calls (no broker in unit tests)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_task(self, name: str, **options: Any) -> None:
        self.sent.append({"name": name, **options})


@pytest.fixture
def svc(tmp_path: Path, fake_redis: fakeredis.FakeRedis) -> WorkerServices:
    settings = Settings(data_dir=tmp_path, heartbeat_stale_after=10, max_run_attempts=2)
    return WorkerServices(settings=settings, redis=fake_redis,
                          storage=Storage(str(tmp_path / "storage")),
                          celery=FakeCelery())  # type: ignore[arg-type]


def test_fresh_and_queued_runs_are_left_alone(svc: WorkerServices) -> None:
    create_run(svc.redis, T, "queued", {}, None)
    create_run(svc.redis, T, "fresh", {}, None)
    start_attempt(svc.redis, RunRef(T, "fresh", 1), "w", 10)
    assert reconcile(svc, time.time() + 5)["requeued"] == 0
    assert svc.celery.sent == []  # type: ignore[attr-defined]


def test_a_stale_run_is_requeued_then_given_up_after_the_attempt_cap(
    svc: WorkerServices,
) -> None:
    create_run(svc.redis, T, "m", {}, None)
    start_attempt(svc.redis, RunRef(T, "m", 1), "w1", 10)
    outcome = reconcile(svc, time.time() + 60)
    assert outcome["requeued"] == 1
    sent = svc.celery.sent  # type: ignore[attr-defined]
    assert sent[0]["name"] == "recsys.train" and sent[0]["queue"] == "train"
    assert sent[0]["kwargs"] == {"tenant": T, "model_id": "m", "version": 1}
    assert sent[0]["soft_time_limit"] == svc.settings.train_soft_time_limit
    status = get_status(svc.redis, T, "m")
    assert (status["status"], status["phase"]) == ("running", "queued")
    assert "attempt 2 of 2" in status["message"]
    start_attempt(svc.redis, RunRef(T, "m", 1), "w2", 10)  # the second attempt dies too
    assert reconcile(svc, time.time() + 60)["failed"] == 1
    status = get_status(svc.redis, T, "m")
    assert (status["status"], status["phase"]) == ("error", "failed")
    assert "stopped responding 2 times" in status["message"]
    assert reconcile(svc, time.time() + 120) == {"requeued": 0, "failed": 0, "cancelled": 0,
                                                 "forgotten": 0}


def test_a_stale_run_with_a_cancel_request_ends_cancelled(svc: WorkerServices) -> None:
    create_run(svc.redis, T, "m", {}, None)
    start_attempt(svc.redis, RunRef(T, "m", 1), "w1", 10)
    request_cancel(svc.redis, None, T, "m")
    assert reconcile(svc, time.time() + 60)["cancelled"] == 1
    assert get_status(svc.redis, T, "m")["phase"] == "cancelled"


def test_a_run_queued_past_the_visibility_timeout_is_enqueued_again(
    svc: WorkerServices,
) -> None:
    create_run(svc.redis, T, "lost", {}, None)
    assert reconcile(svc, time.time() + 60)["requeued"] == 0
    later = time.time() + svc.settings.visibility_timeout + 60
    assert reconcile(svc, later)["requeued"] == 1
    assert [m["kwargs"]["model_id"] for m in svc.celery.sent] == ["lost"]  # type: ignore[attr-defined]
    assert get_status(svc.redis, T, "lost")["phase"] == "queued"


def test_a_run_that_stopped_waiting_for_a_tenant_slot_is_enqueued_again(
    svc: WorkerServices,
) -> None:
    from shared.runs import slots

    create_run(svc.redis, T, "waiting", {}, None)
    assert slots.note_waiting(svc.redis, RunRef(T, "waiting", 1), 2)
    # while its retries keep coming, it is left alone
    assert reconcile(svc, time.time() + 5)["requeued"] == 0
    # once they stop for longer than a heartbeat may, its worker is taken as lost
    assert reconcile(svc, time.time() + svc.settings.heartbeat_stale_after + 5)["requeued"] == 1
    assert [m["kwargs"]["model_id"] for m in svc.celery.sent] == ["waiting"]  # type: ignore[attr-defined]
    status = get_status(svc.redis, T, "waiting")
    assert status["phase"] == "queued" and "queued again" in status["message"]
    assert reconcile(svc, time.time() + 5)["requeued"] == 0
