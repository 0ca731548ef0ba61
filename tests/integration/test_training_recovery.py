"""A worker SIGKILLed mid-training: the reconciler requeues the run and a new worker finishes it."""

from __future__ import annotations

import signal
import time

import pytest
import requests

from shared.queue import make_producer
from shared.registry import connect
from shared.storage import open_storage
from tests.helpers.stack import Stack
from tests.helpers.training import status, upload_clustered, wait_until_ended
from worker.context import WorkerServices
from worker.reconcile import reconcile

pytestmark = pytest.mark.own_stack  # kills and restarts its worker


def test_a_killed_worker_s_run_completes_on_a_restarted_worker(
    stack: Stack, http: requests.Session
) -> None:
    upload_clustered(stack, http, "big", n_users=1500, n_items=400, per_user=40)
    body = {"model_id": "m-kill", "data_tags": ["big"], "evaluation": {"holdout": 0},
            "hyperparameters": {"epochs": 100, "no_components": 32}}
    assert http.post(stack.url("/train"), json=body, headers=stack.headers(),
                     timeout=10).status_code == 202
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = status(stack, http, "m-kill")
        seen.append(current["progress"])
        if current["phase"] == "training" and current["progress"] >= 20:
            break
        assert current["status"] == "running", current
        time.sleep(0.05)
    else:
        raise AssertionError("training never got going")

    # when the whole worker dies mid-epoch
    stack.stop_worker(stack.workers[0], signal.SIGKILL)
    killed_at = time.monotonic()
    stack.start_worker()
    svc = WorkerServices(settings=stack.settings, redis=connect(stack.settings),
                         storage=open_storage(stack.settings.storage_root()),
                         celery=make_producer(stack.settings))
    # then the reconciler (beat runs it every reconcile_interval) sees the stale heartbeat
    requeued = 0
    while time.monotonic() - killed_at < 30 and not requeued:
        requeued = reconcile(svc)["requeued"]
        current = status(stack, http, "m-kill")
        seen.append(current["progress"])
        assert current["status"] == "running"
        time.sleep(0.5)
    assert requeued == 1
    assert status(stack, http, "m-kill")["phase"] in ("queued", "loading_data", "training")

    final, after = wait_until_ended(stack, http, "m-kill", timeout=120)
    seen += after
    assert final["status"] == "completed", final
    assert seen == sorted(seen), "progress went backwards across the restart"
    assert time.monotonic() - killed_at < 150
    record = stack.redis.hgetall("recsys:t:default:run:m-kill:1")
    assert record["attempts"] == "2"
    assert not stack.redis.sismember("recsys:runs:active", "default/m-kill/1")
