"""The two evaluation fits of ``use_metadata_features: "auto"`` as two tasks (worker/candidates.py).

With two free worker processes the run fits the candidate with metadata and
another process fits the one without; with one worker process the run fits
both itself and never waits on a task that cannot start.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from shared.runs.records import run_key
from tests.helpers.stack import Stack
from tests.helpers.training import upload_clustered, wait_until_ended

pytestmark = [pytest.mark.integration, pytest.mark.own_stack]  # restarts its worker

#: Fixed epochs so each candidate fit lasts a few seconds: long enough that the
#: second worker process has claimed its candidate before the run finishes its own.
BODY = {"data_tags": ["candidates"], "use_metadata_features": "auto",
        "hyperparameters": {"epochs": 30, "no_components": 32},
        "evaluation": {"holdout": 0.2}}


@pytest.fixture(scope="module")
def data(stack: Stack) -> int:
    with requests.Session() as http:
        return upload_clustered(stack, http, "candidates", n_users=1500, n_items=300)


def _train(stack: Stack, http: requests.Session, model_id: str) -> tuple[dict[str, Any],
                                                                        dict[str, Any]]:
    response = http.post(stack.url("/train"), json={**BODY, "model_id": model_id},
                         headers=stack.headers(), timeout=10)
    assert response.status_code == 202, response.text
    final, seen = wait_until_ended(stack, http, model_id, timeout=180)
    assert final["status"] == "completed", final
    assert seen == sorted(seen), "progress went backwards"
    fits = json.loads(stack.redis.hget(run_key(stack.tenant, model_id, 1), "candidate_fits"))
    return final, fits


def _check_training(final: dict[str, Any]) -> None:
    training = final["training"]
    assert training["epochs"] == 30
    assert set(training["candidates"]) == {"with_metadata", "without_metadata"}
    assert all(0 < p <= 1 for p in training["candidates"].values())
    winner = "with_metadata" if training["metadata_features"] else "without_metadata"
    assert training["candidates"][winner] == max(training["candidates"].values())
    assert [p["epoch"] for p in training["curve"]][-1] == 30
    assert final["metrics"]["precision_at_k"] == training["candidates"][winner]
    assert "candidate_fits" not in training  # the status keeps to API.md


def test_two_free_worker_processes_fit_the_two_candidates_at_once(
        stack: Stack, http: requests.Session, data: int) -> None:
    # one training thread per fit, so that two fits at once fit in the cores of a 2-core
    # machine and the run offers the second candidate (worker.candidates.worth_offering)
    for proc in list(stack.workers):
        stack.stop_worker(proc)
    stack.env["RECSYS_TRAIN_THREADS"] = "1"
    stack.start_worker(concurrency=2, name="pair@localhost")
    final, fits = _train(stack, http, "m-two")
    _check_training(final)
    assert set(fits) == {"with_metadata", "without_metadata"}
    workers = {fits[name]["worker"] for name in fits}
    assert len(workers) == 2, f"both candidates ran in one process: {fits}"


def test_one_worker_process_fits_both_candidates_itself(
        stack: Stack, http: requests.Session, data: int) -> None:
    for proc in list(stack.workers):
        stack.stop_worker(proc)
    stack.env["RECSYS_TRAIN_THREADS"] = "2"  # on 2 cores: not offered; 4+: nobody free
    stack.start_worker(concurrency=1, name="single@localhost")
    final, fits = _train(stack, http, "m-one")
    _check_training(final)
    assert fits["with_metadata"]["worker"] == fits["without_metadata"]["worker"], fits
