"""Flower as the ops view of training, through a real Flower, beat and worker.

An operator watching Flower sees the training task (never buried under the
periodic scans), its phase and progress while it trains, and can stop it with
Revoke/Terminate: the run then ends as cancelled, exactly as
``POST /train/<id>/cancel`` ends it, its callback is sent, and the reconciler
never queues it again.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from shared.contracts import TASK_RECONCILE_RUNS, TASK_SCAN_CALLBACKS, TASK_TRAIN
from shared.queue import make_producer
from shared.stack.procs import stop_group
from tests.helpers.callback_receiver import receiving
from tests.helpers.servers import free_port
from tests.helpers.stack import ROOT, Stack
from tests.helpers.training import status, upload_clustered, wait_for_phase

pytestmark = [pytest.mark.integration, pytest.mark.own_stack]  # starts beat on its Redis

AUTH = ("ops", "flower-test-login")
HOUSEKEEPING = {TASK_SCAN_CALLBACKS, TASK_RECONCILE_RUNS}


def _start(stack: Stack, args: list[str], log_name: str,
           extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = open(stack.data_dir / log_name, "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.celery_app", *args],
                            cwd=ROOT, env={**stack.env, **(extra or {})}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc


@pytest.fixture(scope="module")
def flower(stack: Stack) -> Iterator[str]:
    port = free_port()
    beat = _start(stack, ["beat", "--loglevel", "INFO", "-s",
                          str(stack.data_dir / "beat-schedule")], "beat.log")
    proc = _start(stack, ["flower", "--address=127.0.0.1", f"--port={port}",
                          "--persistent=False"], "flower.log",
                  {"FLOWER_BASIC_AUTH": ":".join(AUTH), "FLOWER_UNAUTHENTICATED_API": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/api/workers", auth=AUTH, timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, (stack.data_dir / "flower.log").read_text()[-2000:]
            time.sleep(0.2)
        else:
            raise AssertionError("Flower did not answer within 60 s")
        yield url
    finally:
        stop_group(proc)
        stop_group(beat)


def _tasks(url: str) -> dict[str, dict[str, Any]]:
    response = requests.get(f"{url}/api/tasks", auth=AUTH, timeout=5)
    assert response.status_code == 200, response.text
    tasks: dict[str, dict[str, Any]] = response.json()
    return tasks


def _housekeeping_done(stack: Stack) -> dict[str, int]:
    """How many scans and reconciles the workers have run (their own counters, no events)."""
    stats = make_producer(stack.settings).control.inspect(timeout=2).stats() or {}
    done = {name: 0 for name in HOUSEKEEPING}
    for worker in stats.values():
        for name, count in (worker.get("total") or {}).items():
            if name in done:
                done[name] += int(count)
    return done


def _wait(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_flower_needs_its_login(flower: str) -> None:
    assert requests.get(f"{flower}/api/tasks", timeout=5).status_code == 401
    assert requests.get(f"{flower}/api/tasks", auth=AUTH, timeout=5).status_code == 200


def test_training_shows_progress_and_terminate_cancels_the_run(
    stack: Stack, http: requests.Session, flower: str
) -> None:
    upload_clustered(stack, http, "flower", n_users=3000, n_items=1000)
    # Given each scan has run (its events would show by now) ...
    _wait(lambda: min(_housekeeping_done(stack).values()) >= 1, 60, "one of each scan")
    with receiving() as receiver:
        body = {"model_id": "m-flower", "data_tags": ["flower"],
                "callback_url": receiver.url(),
                "hyperparameters": {"epochs": 1000, "no_components": 32},
                "evaluation": {"holdout": 0}}
        response = http.post(stack.url("/train"), json=body, headers=stack.headers(), timeout=10)
        assert response.status_code == 202, response.text
        wait_for_phase(stack, http, "m-flower", "training", timeout=90)
        task_id = stack.redis.hget(f"recsys:t:{stack.tenant}:run:m-flower:1", "task_id")

        # ... Flower lists the training task with its phase and progress, and no scan at all.
        def progress_shown() -> Any:
            task = _tasks(flower).get(task_id)
            return (task and task["state"] == "PROGRESS"
                    and str(task.get("result")).startswith("training ") and task)

        task = _wait(progress_shown, 60, "the task's progress in Flower")
        assert task["name"] == TASK_TRAIN
        assert "%" in str(task["result"])
        names = {t.get("name") for t in _tasks(flower).values()}
        assert not names & HOUSEKEEPING, names

        # When the operator presses Terminate ...
        revoked = requests.post(f"{flower}/api/task/revoke/{task_id}", auth=AUTH,
                                data={"terminate": "true"}, timeout=10)
        assert revoked.status_code == 200, revoked.text
        ended = _wait(lambda: (s := status(stack, http, "m-flower"))["status"] != "running"
                      and s, 60, "the run to end")
        # ... the run ends as a cancel does, and its callback says so.
        assert (ended["status"], ended["phase"]) == ("error", "cancelled"), ended
        delivered = receiver.wait_for(1, timeout=60)[0]
        assert b'"cancelled"' in delivered.body

        # The reconciler runs again after the heartbeat went stale, and never re-queues it.
        before = _housekeeping_done(stack)[TASK_RECONCILE_RUNS]
        since = time.monotonic()
        _wait(lambda: _housekeeping_done(stack)[TASK_RECONCILE_RUNS] >= before + 2
              and time.monotonic() - since > stack.settings.heartbeat_stale_after,
              90, "the reconciler to run past the stale heartbeat")
        final = status(stack, http, "m-flower")
        assert (final["status"], final["phase"], final["version"]) == ("error", "cancelled", 1)
        record = stack.redis.hgetall(f"recsys:t:{stack.tenant}:run:m-flower:1")
        assert record["task_id"] == task_id, "the run was queued again"
