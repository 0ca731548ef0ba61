"""The queue works end to end: a real worker runs a task that reports PROGRESS, the API reads it."""

from __future__ import annotations

import time

import requests
from celery.result import AsyncResult

from shared.contracts import PROGRESS_STATE, TASK_PROGRESS_PROBE
from shared.queue import make_producer
from tests.helpers.stack import Stack


def test_readyz_is_200_with_redis_storage_and_a_worker(
    stack: Stack, http: requests.Session
) -> None:
    response = http.get(stack.url("/readyz"), timeout=10)
    assert response.status_code == 200
    assert response.json()["checks"]["redis"] == "ok"


def test_a_task_reports_progress_through_the_real_queue(stack: Stack) -> None:
    celery = make_producer(stack.settings)
    result: AsyncResult = celery.send_task(TASK_PROGRESS_PROBE, kwargs={"steps": 4, "delay": 0.3})
    seen: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not result.ready():
        if result.state == PROGRESS_STATE:
            seen.append(int(result.info["progress"]))
        time.sleep(0.05)
    assert result.get(timeout=30) == {"steps": 4, "done": True}
    assert seen, "the API side never saw a PROGRESS state"
    assert seen == sorted(seen), "progress went backwards"
    assert 0 < seen[0] < 100
