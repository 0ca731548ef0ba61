"""Training through the real queue: a prefork worker with 2 OpenMP threads, the API over HTTP."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from celery.result import AsyncResult

from shared.contracts import PROGRESS_STATE
from shared.queue import make_producer
from shared.storage import model_dir, open_storage
from shared.webhooks.deliveries import SCHEDULE_KEY, schedule_member
from tests.helpers.stack import Stack
from tests.helpers.training import (
    upload_clustered,
    wait_for_phase,
    wait_until_ended,
)
from tests.helpers.waiting import wait_until

SMALL = {"hyperparameters": {"epochs": 5, "no_components": 8}}


@pytest.fixture(scope="module")
def data(stack: Stack) -> int:
    with requests.Session() as http:
        return upload_clustered(stack, http, "clusters", n_users=300, n_items=200)


def test_progress_rises_monotonically_to_100_with_metrics(
    stack: Stack, http: requests.Session, data: int
) -> None:
    body = {"model_id": "m-progress", "data_tags": ["clusters"],
            "hyperparameters": {"epochs": 40, "no_components": 16},
            "evaluation": {"holdout": 0.2}}
    response = http.post(stack.url("/train"), json=body, headers=stack.headers(), timeout=10)
    assert response.status_code == 202, response.text
    assert response.json()["phase"] in ("queued", "loading_data")
    task_id = stack.redis.hget(f"recsys:t:{stack.tenant}:run:m-progress:1", "task_id")
    result = AsyncResult(task_id, app=make_producer(stack.settings))
    states: set[str] = set()
    seen: list[int] = []
    phases: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = http.get(stack.url("/status?model_id=m-progress"), headers=stack.headers(),
                          timeout=10).json()
        states.add(result.state)
        seen.append(status["progress"])
        if not phases or phases[-1] != status["phase"]:
            phases.append(status["phase"])
        if status["status"] != "running":
            break
        time.sleep(0.03)
    assert status["status"] == "completed", status
    assert seen == sorted(seen), "progress went backwards"
    assert 100 not in seen[:-1] and seen[-1] == 100
    assert len(set(seen)) >= 5
    assert {"training", "evaluating", "done"} <= set(phases)
    assert PROGRESS_STATE in states
    metrics = status["metrics"]
    assert metrics["k"] == 10 and metrics["precision_at_k"] > metrics["baseline_precision_at_k"]
    assert status["counts"] == {"entities": 500, "interactions": data, "sources": 300,
                                "targets": 200}
    assert status["data_batch_ids"] and status["start_timestamp"] and status["end_timestamp"]
    model = http.get(stack.url("/models/m-progress"), headers=stack.headers(), timeout=10).json()
    assert model["serving_version"] == 1 and model["versions"] == [1]
    storage = open_storage(stack.settings.storage_root())
    assert storage.exists(f"{model_dir(stack.tenant, 'm-progress', 1)}/manifest.json")


def test_a_model_training_gets_409_and_cancel_stops_it(
    stack: Stack, http: requests.Session, data: int
) -> None:
    body = {"model_id": "m-busy", "data_tags": ["clusters"],
            "hyperparameters": {"epochs": 1000, "no_components": 8}, "evaluation": {"holdout": 0}}
    assert http.post(stack.url("/train"), json=body, headers=stack.headers(),
                     timeout=10).status_code == 202
    again = http.post(stack.url("/train"), json=body, headers=stack.headers(), timeout=10)
    assert again.status_code == 409
    assert again.json()["error"]["details"]["model_id"] == "m-busy"
    wait_for_phase(stack, http, "m-busy", "training")
    cancel = http.post(stack.url("/train/m-busy/cancel"), headers=stack.headers(), timeout=10)
    assert cancel.status_code == 202
    final, _ = wait_until_ended(stack, http, "m-busy", timeout=30)
    assert (final["status"], final["phase"]) == ("error", "cancelled")
    assert final["progress"] < 100
    model = http.get(stack.url("/models/m-busy"), headers=stack.headers(), timeout=10).json()
    assert model["serving_version"] is None


def test_a_failing_retrain_leaves_the_old_version_serving(
    stack: Stack, http: requests.Session, data: int
) -> None:
    first = {"model_id": "m-keep", "data_tags": ["clusters"], **SMALL}
    assert http.post(stack.url("/train"), json=first, headers=stack.headers(),
                     timeout=10).status_code == 202
    assert wait_until_ended(stack, http, "m-keep")[0]["status"] == "completed"
    failing = {**first, "data_tags": ["no-such-tag"]}
    assert http.post(stack.url("/train"), json=failing, headers=stack.headers(),
                     timeout=10).status_code == 202
    final, _ = wait_until_ended(stack, http, "m-keep")
    assert (final["status"], final["phase"], final["version"]) == ("error", "failed", 2)
    assert "data_tags" in final["message"]
    model = http.get(stack.url("/models/m-keep"), headers=stack.headers(), timeout=10).json()
    assert model["serving_version"] == 1 and model["versions"] == [1]
    assert http.post(stack.url("/train"), json=first, headers=stack.headers(),
                     timeout=10).status_code == 202
    assert wait_until_ended(stack, http, "m-keep")[0]["status"] == "completed"
    model = http.get(stack.url("/models/m-keep"), headers=stack.headers(), timeout=10).json()
    assert model["serving_version"] == 3 and model["versions"] == [1, 3]


def test_dry_run_reports_counts_without_creating_a_run(
    stack: Stack, http: requests.Session, data: int
) -> None:
    body = {"model_id": "m-dry", "data_tags": ["clusters"], "dry_run": True,
            "interaction_weights": {"view": 0.5}}
    response = http.post(stack.url("/train"), json=body, headers=stack.headers(), timeout=30)
    assert response.status_code == 200, response.text
    got = response.json()
    assert got["counts"]["sources"] == 300 and got["counts"]["interactions"] == data
    assert got["estimated_duration_seconds"] > 0
    assert http.get(stack.url("/models/m-dry"), headers=stack.headers(),
                    timeout=10).status_code == 404


def test_a_finished_run_posts_its_status_to_the_callback_once(
    stack: Stack, http: requests.Session, data: int
) -> None:
    from tests.helpers.callback_receiver import receiving

    with receiving() as receiver:
        body = {"model_id": "m-hook", "data_tags": ["clusters"], "callback_url": receiver.url(),
                **SMALL}
        assert http.post(stack.url("/train"), json=body, headers=stack.headers(),
                         timeout=10).status_code == 202
        final, _ = wait_until_ended(stack, http, "m-hook")
        assert final["status"] == "completed"
        (request,) = receiver.wait_for(1, timeout=30)
        secret = http.get(stack.url("/webhook_secret"), headers=stack.headers(),
                          timeout=10).json()["secret"]
        posted = request.verify(secret)
        assert (posted["model_id"], posted["version"], posted["status"], posted["progress"]) == (
            "m-hook", 1, "completed", 100)
        shown = wait_until(lambda: _delivered(stack, http, "m-hook"), what="delivered")
        assert shown["attempts"] == 1
        # delivered and off the schedule: no attempt can send it again (each re-reads the
        # record under the delivery's lock), so the count is final
        member = schedule_member(stack.tenant, "m-hook", 1)
        assert stack.redis.zscore(SCHEDULE_KEY, member) is None
        assert len(receiver.requests) == 1


def _delivered(stack: Stack, http: requests.Session, model_id: str) -> dict[str, Any] | None:
    shown: dict[str, Any] | None = http.get(stack.url(f"/status/{model_id}"),
                                            headers=stack.headers(), timeout=10).json()["callback"]
    return shown if shown and shown["state"] == "delivered" else None


def test_the_soft_time_limit_ends_a_run_as_error_with_a_clear_message(
    stack: Stack, http: requests.Session, data: int
) -> None:
    from shared.contracts import QUEUE_TRAIN, TASK_TRAIN
    from shared.runs.lifecycle import create_run

    # given a long run sent with a 1-second soft limit (the API sends the configured ones)
    params = {"data_tags": ["clusters"], "evaluation": {"holdout": 0},
              "hyperparameters": {"epochs": 1000, "no_components": 16}}
    version = create_run(stack.redis, stack.tenant, "m-slow", params, None)["version"]
    make_producer(stack.settings).send_task(
        TASK_TRAIN, kwargs={"tenant": stack.tenant, "model_id": "m-slow", "version": version},
        queue=QUEUE_TRAIN, soft_time_limit=1, time_limit=60)
    final, _ = wait_until_ended(stack, http, "m-slow", timeout=60)
    assert (final["status"], final["phase"]) == ("error", "failed")
    assert "time limit" in final["message"] and "RECSYS_TRAIN_SOFT_TIME_LIMIT" in final["message"]


def test_a_trained_model_serves_recommendations_and_cold_start(
    stack: Stack, http: requests.Session, data: int
) -> None:
    # metadata on explicitly: "auto" (the default) may drop it when it does not help the
    # holdout, and this test is about cold start from metadata
    body = {"model_id": "m-serve", "data_tags": ["clusters"], "use_metadata_features": True,
            "hyperparameters": {"epochs": 20, "no_components": 16}}
    assert http.post(stack.url("/train"), json=body, headers=stack.headers(),
                     timeout=10).status_code == 202
    assert wait_until_ended(stack, http, "m-serve")[0]["status"] == "completed"
    got = http.get(stack.url("/recommended_items?model_id=m-serve&source_id=u1"),
                   headers=stack.headers(), timeout=30)
    assert got.status_code == 200, got.text
    rows = got.json()["recommendations"]
    assert len(rows) == 10 and not any(r["fallback"] for r in rows)
    cold = http.post(stack.url("/recommended_items"), headers=stack.headers(), timeout=30,
                     json={"model_id": "m-serve", "source_id": "newcomer",
                           "source_metadata": {"segment": "s1", "age": 21}})
    assert cold.status_code == 200, cold.text
    cold_rows = cold.json()["recommendations"]
    assert all(r["fallback"] for r in cold_rows)
    # users of segment s1 like the items of cluster 1 (i % 5 == 1): so does the newcomer
    in_cluster = sum(int(r["target_id"][1:]) % 5 == 1 for r in cold_rows)
    assert in_cluster >= 6, cold_rows
