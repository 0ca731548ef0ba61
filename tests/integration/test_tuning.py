"""A search through real workers: trials in parallel on every worker process, a trial whose
process is SIGKILLed mid-trial recorded as failed while the search goes on, and cancel."""

from __future__ import annotations

import itertools
import os
import signal
import time
from typing import Any

import pytest
import requests

from shared.queue import make_producer
from shared.registry import connect
from shared.runs.records import get_run
from shared.storage import open_storage
from tests.helpers.stack import Stack
from tests.helpers.training import status, upload_clustered
from worker.context import WorkerServices
from worker.tuning.search import check

pytestmark = [pytest.mark.integration, pytest.mark.own_stack]  # kills a pool process

#: Trials long enough (a second or more each) to be seen running side by side.
SLOW = {"hyperparameters": {"epochs": 25, "no_components": 32},
        "search": {"space": {"learning_rate": [0.01, 0.1], "max_sampled": [5, 20]}}}


@pytest.fixture(scope="module")
def tuning_data(stack: Stack) -> None:
    with requests.Session() as http:
        upload_clustered(stack, http, "tune")


def _post(stack: Stack, http: requests.Session, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(stack.url("/tune"), headers=stack.headers(), json=body, timeout=30)
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


def _wait_for(stack: Stack, http: requests.Session, model_id: str, predicate: Any,
              timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = status(stack, http, model_id)
        if predicate(body):
            return body
        assert body["status"] == "running", body
        time.sleep(0.25)  # well inside the API's rate limit
    raise AssertionError(f"{model_id}: condition not met within {timeout} s: {body}")


def wait_until_ended(stack: Stack, http: requests.Session, model_id: str,
                     timeout: float) -> tuple[dict[str, Any], None]:
    """The final status of the run (polled at a pace the rate limit allows)."""
    return _wait_for(stack, http, model_id, lambda b: b["status"] != "running", timeout), None


def _running(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in (body.get("tuning") or {}).get("trials", []) if t["state"] == "running"]


def test_trials_run_in_parallel_and_the_best_is_served(
        stack: Stack, http: requests.Session, tuning_data: None) -> None:
    body = _post(stack, http, {"model_id": "t-par", "data_tags": ["tune"], **SLOW,
                               "search": {**SLOW["search"], "trials": 4}})
    assert body["phase"] == "tuning"

    final, _ = wait_until_ended(stack, http, "t-par", timeout=240)

    assert final["status"] == "completed", final
    tuned = final["tuning"]
    assert [t["state"] for t in tuned["trials"]] == ["complete"] * 4
    assert all(t["worker"] and t["seconds"] > 0 for t in tuned["trials"])
    record = get_run(stack.redis, "default", "t-par")
    assert record is not None
    spans = sorted((t["_started"], t["_ended"]) for t in record["tuning"]["trials"])
    # both of the worker's processes ran trials at the same time
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))
    model = http.get(stack.url("/models/t-par"), headers=stack.headers(), timeout=10).json()
    assert model["serving_version"] == final["version"]
    recs = http.get(stack.url("/recommended_items"), headers=stack.headers(), timeout=10,
                    params={"model_id": "t-par", "source_id": "u1"})
    assert recs.status_code == 200, recs.text


def _services(stack: Stack) -> WorkerServices:
    return WorkerServices(settings=stack.settings, redis=connect(stack.settings),
                          storage=open_storage(stack.settings.storage_root()),
                          celery=make_producer(stack.settings))


def test_a_trial_whose_process_is_killed_is_failed_and_the_search_goes_on(
        stack: Stack, http: requests.Session, tuning_data: None) -> None:
    _post(stack, http, {"model_id": "t-kill", "data_tags": ["tune"], **SLOW,
                        "search": {**SLOW["search"], "trials": 3, "parallelism": 1}})
    _wait_for(stack, http, "t-kill", lambda b: bool(_running(b)))
    record = get_run(stack.redis, "default", "t-kill")
    assert record is not None
    victim = next(t for t in record["tuning"]["trials"] if t["state"] == "running")
    os.kill(victim["_pid"], signal.SIGKILL)  # the pool process running the trial
    svc = _services(stack)
    # then the check (beat runs it every reconcile_interval) sees the stale heartbeat
    deadline = time.monotonic() + 60
    lost: dict[str, Any] = {}
    while time.monotonic() < deadline and lost.get("state") != "failed":
        check(svc)
        lost = status(stack, http, "t-kill")["tuning"]["trials"][victim["trial"]]
        time.sleep(0.5)
    assert lost["state"] == "failed" and "Lost with its worker" in lost["message"], lost

    final, _ = wait_until_ended(stack, http, "t-kill", timeout=240)

    assert final["status"] == "completed", final
    states = [t["state"] for t in final["tuning"]["trials"]]
    assert states.count("failed") == 1 and states.count("complete") == 2, states


def test_cancel_stops_running_and_queued_trials(
        stack: Stack, http: requests.Session, tuning_data: None) -> None:
    _post(stack, http, {"model_id": "t-cancel", "data_tags": ["tune"], **SLOW,
                        "search": {**SLOW["search"], "trials": 6}})
    _wait_for(stack, http, "t-cancel", lambda b: bool(_running(b)))
    response = http.post(stack.url("/train/t-cancel/cancel"), headers=stack.headers(),
                         timeout=10)
    assert response.status_code == 202, response.text

    final, _ = wait_until_ended(stack, http, "t-cancel", timeout=120)

    assert (final["status"], final["phase"]) == ("error", "cancelled"), final
    states = [t["state"] for t in final["tuning"]["trials"]]
    assert "cancelled" in states and "queued" not in states and "running" not in states
    model = http.get(stack.url("/models/t-cancel"), headers=stack.headers(), timeout=10).json()
    assert model["serving_version"] is None
