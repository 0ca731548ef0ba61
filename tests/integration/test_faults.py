"""Faults a self-hosted stack meets: a worker told to stop mid-run, Redis going away while
a run trains, and a request to train while Redis is down.

These tests restart Redis, so they run on a private embedded server, not the session one.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from shared.keys import lookup
from shared.queue import make_producer
from shared.registry import connect
from shared.stack.embedded import EmbeddedServer, start_embedded
from shared.storage import open_storage
from tests.helpers.stack import Stack, running_stack
from tests.helpers.training import status, upload_clustered
from tests.helpers.waiting import log_count, wait_until
from worker.context import WorkerServices
from worker.reconcile import reconcile

LONG_RUN = {"evaluation": {"holdout": 0}, "hyperparameters": {"epochs": 80, "no_components": 32}}


class FaultStack(Stack):
    """A Stack that owns its Redis, so a test may stop and restart it."""

    server: EmbeddedServer


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """A private embedded server, one worker and the API over HTTP."""
    base = tmp_path_factory.mktemp("faults")
    server = start_embedded(base / "redis")
    data_dir = base / "var"
    data_dir.mkdir()
    st: FaultStack | None = None
    try:
        with running_stack(server.url, data_dir, FaultStack) as st:
            st.server = server
            with requests.Session() as http:
                upload_clustered(st, http, "faults", n_users=1200, n_items=300, per_user=40)
            yield st
    finally:
        # the tests restart Redis: stop whichever server is current
        (st.server if st is not None else server).stop()


def _train(st: Stack, http: requests.Session, model_id: str) -> None:
    body = {"model_id": model_id, "data_tags": ["faults"], **LONG_RUN}
    response = http.post(st.url("/train"), json=body, headers=st.headers(), timeout=10)
    assert response.status_code == 202, response.text


def _wait_training(st: Stack, http: requests.Session, model_id: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = status(st, http, model_id)
        if current["phase"] == "training" and current["progress"] >= 15:
            return
        assert current["status"] == "running", current
        time.sleep(0.05)
    raise AssertionError("training never got going")


def _reconcile_until_ended(st: Stack, http: requests.Session, model_id: str,
                           timeout: float) -> dict[str, object]:
    """Drive the reconciler as beat would, until the run ends."""
    svc = WorkerServices(settings=st.settings, redis=connect(st.settings),
                         storage=open_storage(st.settings.storage_root()),
                         celery=make_producer(st.settings))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = status(st, http, model_id)
        if current["status"] != "running":
            return current
        reconcile(svc)
        time.sleep(1.0)
    raise AssertionError(f"{model_id} still running after {timeout} s: {current}")


def _broker_losses(st: Stack) -> int:
    """How often the stack's workers have logged losing the broker connection."""
    return sum(log_count(path, "Connection to broker lost") for path in st.data_dir.glob("*.log"))


def _outages_met(st: Stack) -> int:
    """How often the stack's training runs have logged that Redis was unreachable."""
    return sum(log_count(path, "Redis is unreachable") for path in st.data_dir.glob("*.log"))


def test_sigterm_mid_run_lets_the_run_complete(faulty: FaultStack,
                                               http: requests.Session) -> None:
    _train(faulty, http, "m-term")
    _wait_training(faulty, http, "m-term")
    # when the worker is asked to stop (a deploy, a scale-down) mid-run
    faulty.stop_worker(faulty.workers[0], signal.SIGTERM)
    faulty.start_worker()
    # then the run still completes: finished by the warm shutdown, or requeued and redone
    final = _reconcile_until_ended(faulty, http, "m-term", timeout=150)
    assert final["status"] == "completed", final


def test_redis_restart_while_a_run_trains(faulty: FaultStack, http: requests.Session,
                                          tmp_path: Path) -> None:
    _train(faulty, http, "m-redis")
    _wait_training(faulty, http, "m-redis")
    batches_before = http.get(faulty.url("/data_batch"), headers=faulty.headers(),
                              timeout=10).json()
    # when Redis goes away mid-run
    lost_before, met_before = _broker_losses(faulty), _outages_met(faulty)
    faulty.server.stop()
    started = time.monotonic()
    response = http.get(faulty.url("/status/m-redis"), headers=faulty.headers(), timeout=15)
    # then the API answers 503 quickly, in the JSON format
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "dependency_unavailable"
    assert time.monotonic() - started < 5
    # and the worker has seen it go (rather than Redis being back before anyone noticed):
    # its consumer lost the broker, or the run it was training hit the outage (a consumer
    # holding its one prefetched task issues no read that could fail meanwhile)
    wait_until(lambda: _broker_losses(faulty) > lost_before
               or _outages_met(faulty) > met_before, timeout=60,
               what="the worker to notice the broker is gone")
    # and when it comes back on the same data
    faulty.server = start_embedded(faulty.server.directory)
    # nothing was lost: the key, the batches
    assert lookup(faulty.redis, faulty.api_key) is not None
    batches_after = http.get(faulty.url("/data_batch"), headers=faulty.headers(),
                             timeout=10).json()
    assert batches_after == batches_before
    # and the run does not stay running: it completes, or ends as error with a message
    final = _reconcile_until_ended(faulty, http, "m-redis", timeout=180)
    assert final["status"] in ("completed", "error"), final
    if final["status"] == "error":
        assert final["message"], final
    # and the worker consumes new work afterwards
    _train(faulty, http, "m-after")
    after = _reconcile_until_ended(faulty, http, "m-after", timeout=180)
    assert after["status"] == "completed", after


def test_train_while_redis_is_down_is_a_fast_503_leaving_nothing(
    faulty: FaultStack, http: requests.Session
) -> None:
    faulty.server.stop()
    try:
        started = time.monotonic()
        response = http.post(faulty.url("/train"), headers=faulty.headers(), timeout=15,
                             json={"model_id": "m-down", "data_tags": ["faults"]})
        assert response.status_code == 503, response.text
        assert time.monotonic() - started < 5
    finally:
        faulty.server = start_embedded(faulty.server.directory)
    gone = http.get(faulty.url("/status/m-down"), headers=faulty.headers(), timeout=10)
    assert gone.status_code == 404, gone.text
    models = http.get(faulty.url("/models"), headers=faulty.headers(), timeout=10).json()
    assert "m-down" not in str(models)
