"""The run registry: one active run per model, monotonic progress, one end per run."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

import shared.runs.lifecycle as lifecycle
from shared.errors import Conflict, NotFound
from shared.runs.ending import complete_run, finish_run, request_cancel
from shared.runs.lifecycle import (
    active_runs,
    create_run,
    delete_model,
    requeue_run,
    start_attempt,
    update_run,
)
from shared.runs.lock import acquire_lock, release_lock
from shared.runs.records import get_model, get_status, list_models, serving_version
from shared.runs.ref import RunRef

T = "acme"


@pytest.fixture
def scheduled(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, str]]:
    calls: list[tuple[str, int, str]] = []

    def fake_schedule(r: Any, celery: Any, tenant: str, model_id: str, version: int,
                      url: str, status: Any) -> None:
        calls.append((model_id, version, status["status"]))

    monkeypatch.setattr("shared.webhooks.deliveries.schedule_for_run", fake_schedule)
    return calls


def _complete(r: fakeredis.FakeRedis, model_id: str, version: int, keep: int = 3) -> list[int]:
    assert start_attempt(r, RunRef(T, model_id, version), f"o{version}", 60) is not None
    status, dropped = complete_run(r, object(), RunRef(T, model_id, version), owner=f"o{version}",  # type: ignore[arg-type]
                                   keep_versions=keep, message="done",
                                   model_fields={"source_type": "user"})
    assert status is not None and status["status"] == "completed"
    return dropped


def test_a_new_run_is_queued_and_the_model_has_no_serving_version(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    status = create_run(fake_redis, T, "m", {"epochs": 3}, None)
    assert (status["status"], status["phase"], status["progress"], status["version"]) == (
        "running", "queued", 0, 1)
    assert serving_version(fake_redis, T, "m") is None
    model = get_model(fake_redis, T, "m")
    assert model is not None and model["last_version"] == 1 and model["versions"] == []
    assert get_status(fake_redis, T, "m")["start_timestamp"] is None


def test_a_second_run_of_a_training_model_conflicts_with_its_status(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    create_run(fake_redis, T, "m", {}, None)
    with pytest.raises(Conflict) as info:
        create_run(fake_redis, T, "m", {}, None)
    assert info.value.details["phase"] == "queued"
    create_run(fake_redis, "other", "m", {}, None)  # another tenant is independent


def test_progress_never_decreases_and_stays_below_100(fake_redis: fakeredis.FakeRedis) -> None:
    create_run(fake_redis, T, "m", {}, None)
    assert start_attempt(fake_redis, RunRef(T, "m", 1), "w1", 60) is not None
    update_run(fake_redis, RunRef(T, "m", 1), "w1", phase="training", progress=40)
    update_run(fake_redis, RunRef(T, "m", 1), "w1", progress=20)
    assert get_status(fake_redis, T, "m")["progress"] == 40
    update_run(fake_redis, RunRef(T, "m", 1), "w1", progress=100)
    assert get_status(fake_redis, T, "m")["progress"] == 99
    # another attempt's writes are ignored
    assert update_run(fake_redis, RunRef(T, "m", 1), "stranger", progress=60) is None


def test_completion_switches_serving_and_keeps_the_last_versions(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    dropped_all: list[int] = []
    for version in range(1, 5):
        assert create_run(fake_redis, T, "m", {}, None)["version"] == version
        dropped_all += _complete(fake_redis, "m", version)
        assert serving_version(fake_redis, T, "m") == version
    assert dropped_all == [1]
    model = get_model(fake_redis, T, "m")
    assert model is not None and model["versions"] == [2, 3, 4]
    assert get_status(fake_redis, T, "m")["progress"] == 100


def test_a_failed_retrain_leaves_the_previous_version_serving(
    fake_redis: fakeredis.FakeRedis, scheduled: list[Any]
) -> None:
    create_run(fake_redis, T, "m", {}, None)
    _complete(fake_redis, "m", 1)
    create_run(fake_redis, T, "m", {}, "http://127.0.0.1/hook")
    start_attempt(fake_redis, RunRef(T, "m", 2), "w", 60)
    ended = finish_run(fake_redis, object(), RunRef(T, "m", 2), phase="failed", message="boom")  # type: ignore[arg-type]
    assert ended is not None and ended["status"] == "error"
    again = finish_run(fake_redis, object(), RunRef(T, "m", 2),  # type: ignore[arg-type]
                       phase="failed", message="again")
    assert again is None
    assert serving_version(fake_redis, T, "m") == 1
    assert scheduled == [("m", 2, "error")]
    assert active_runs(fake_redis) == []


def test_cancel_ends_a_queued_run_at_once_and_flags_a_running_one(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    create_run(fake_redis, T, "q", {}, None)
    status, ended = request_cancel(fake_redis, None, T, "q")
    assert ended and (status["status"], status["phase"]) == ("error", "cancelled")
    assert start_attempt(fake_redis, RunRef(T, "q", 1), "late", 60) is None  # the queued task exits

    create_run(fake_redis, T, "r", {}, None)
    start_attempt(fake_redis, RunRef(T, "r", 1), "w", 60)
    status, ended = request_cancel(fake_redis, None, T, "r")
    assert not ended and status["status"] == "running"
    assert lifecycle.cancel_requested(fake_redis, RunRef(T, "r", 1))
    with pytest.raises(Conflict):
        request_cancel(fake_redis, None, T, "q")
    with pytest.raises(NotFound):
        request_cancel(fake_redis, None, T, "nope")


def test_requeue_lets_a_new_attempt_start_and_counts_attempts(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    create_run(fake_redis, T, "m", {}, None)
    start_attempt(fake_redis, RunRef(T, "m", 1), "w1", 60)
    update_run(fake_redis, RunRef(T, "m", 1), "w1", progress=30)
    assert acquire_lock(fake_redis, T, "m", "w1", 60)
    assert start_attempt(fake_redis, RunRef(T, "m", 1), "w2", 60) is None  # w1 still alive
    requeue_run(fake_redis, RunRef(T, "m", 1), "requeued")
    assert acquire_lock(fake_redis, T, "m", "w2", 60)
    record = start_attempt(fake_redis, RunRef(T, "m", 1), "w2", 60)
    assert record is not None and record["attempts"] == 2 and record["progress"] == 30
    release_lock(fake_redis, T, "m", "w1")  # not the holder: no effect
    assert not acquire_lock(fake_redis, T, "m", "w3", 60)


def test_delete_removes_a_model_but_never_reuses_versions(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    create_run(fake_redis, T, "m", {}, None)
    with pytest.raises(Conflict):
        delete_model(fake_redis, T, "m")
    _complete(fake_redis, "m", 1)
    assert [m["model_id"] for m in list_models(fake_redis, T)] == ["m"]
    assert delete_model(fake_redis, T, "m")["versions"] == [1]
    assert get_model(fake_redis, T, "m") is None and list_models(fake_redis, T) == []
    with pytest.raises(NotFound):
        get_status(fake_redis, T, "m")
    assert create_run(fake_redis, T, "m", {}, None)["version"] == 2


def test_every_end_of_a_run_is_counted_once_for_metrics(
    fake_redis: fakeredis.FakeRedis, scheduled: list[tuple[str, int, str]]
) -> None:
    from shared.metrics import RUNS_KEY

    create_run(fake_redis, T, "done", {}, None)
    _complete(fake_redis, "done", 1)
    create_run(fake_redis, T, "failed", {}, None)
    finish_run(fake_redis, None, RunRef(T, "failed", 1), phase="failed", message="boom")
    finish_run(fake_redis, None, RunRef(T, "failed", 1), phase="failed", message="again")  # no-op
    create_run(fake_redis, T, "stopped", {}, None)
    finish_run(fake_redis, None, RunRef(T, "stopped", 1), phase="cancelled", message="cancelled")
    counters = fake_redis.hgetall(RUNS_KEY)
    assert counters["count:completed"] == "1"
    assert counters["count:error"] == "1"
    assert counters["count:cancelled"] == "1"


def test_a_running_run_with_a_callback_url_shows_its_delivery_as_pending(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    create_run(fake_redis, T, "hooked", {}, "https://example.com/hook")
    callback = get_status(fake_redis, T, "hooked")["callback"]
    assert callback == {
        "state": "pending", "attempts": 0, "last_response_code": None, "next_attempt_at": None,
    }
    create_run(fake_redis, T, "silent", {}, None)
    assert get_status(fake_redis, T, "silent")["callback"] is None
