"""The request id travels from an API request into the real worker's log lines for its task."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import requests

from api.app import create_app
from api.auth import authenticate
from api.context import services
from shared.contracts import TASK_DELIVER_CALLBACK, TASK_PROGRESS_PROBE, TASK_TRAIN
from tests.helpers.callback_receiver import receiving
from tests.helpers.stack import Stack


def _worker_lines(stack: Stack) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for path in stack.data_dir.glob("*.log"):
        for raw in path.read_text(errors="replace").splitlines():
            if raw.startswith("{"):
                try:
                    lines.append(json.loads(raw))
                except ValueError:
                    continue
    return lines


def test_the_request_id_of_the_request_that_enqueued_a_task_is_in_the_workers_log(
    stack: Stack,
) -> None:
    # Given a request carrying X-Request-Id that enqueues a task (as POST /train does)
    request_id = f"it-{uuid.uuid4().hex[:12]}"
    app = create_app(stack.settings)
    headers = {"X-Request-Id": request_id, **stack.headers()}
    with app.test_request_context("/v1/recommender/train", method="POST", headers=headers):
        app.preprocess_request()  # sets the request id
        authenticate()  # as every view does before it enqueues: the tenant is known
        result = services().celery.send_task(TASK_PROGRESS_PROBE, kwargs={"steps": 1, "delay": 0})
    # When the real worker runs it
    assert result.get(timeout=30) == {"steps": 1, "done": True}

    # Then the worker's lines for that task carry the id, and name the task
    deadline = time.monotonic() + 10
    mine: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        mine = [line for line in _worker_lines(stack) if line.get("task_id") == result.id]
        if any(line.get("message") == "task ended" for line in mine):
            break
        time.sleep(0.1)
    assert mine, "the worker wrote no JSON line for the task"
    assert {line.get("request_id") for line in mine} == {request_id}
    assert {line.get("tenant") for line in mine} == {stack.tenant}
    assert any(line["message"] == "task started" for line in mine)
    assert all(line.get("task") == TASK_PROGRESS_PROBE for line in mine)


def test_a_task_enqueued_outside_a_request_has_no_request_id(stack: Stack) -> None:
    app = create_app(stack.settings)
    with app.app_context():
        result = services().celery.send_task(TASK_PROGRESS_PROBE, kwargs={"steps": 1, "delay": 0})
    assert result.get(timeout=30) == {"steps": 1, "done": True}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        mine = [line for line in _worker_lines(stack) if line.get("task_id") == result.id]
        if any(line.get("message") == "task ended" for line in mine):
            break
        time.sleep(0.1)
    assert mine and all("request_id" not in line for line in mine)


def test_the_live_api_echoes_the_request_id(stack: Stack, http: requests.Session) -> None:
    response = http.get(stack.url("/healthz"), headers={"X-Request-Id": "echo-me"}, timeout=10)
    assert response.headers["X-Request-Id"] == "echo-me"
    generated = http.get(stack.url("/healthz"), timeout=10).headers["X-Request-Id"]
    assert len(generated) == 32


def test_the_request_id_reaches_the_training_task_and_its_callback_delivery(
    stack: Stack, http: requests.Session
) -> None:
    # Given a POST /train with X-Request-Id whose run ends (in error: no data) with a callback
    request_id = f"e2e-{uuid.uuid4().hex[:12]}"
    token = uuid.uuid4().hex
    with receiving() as receiver:
        response = http.post(
            stack.url("/train"),
            headers={**stack.headers(), "X-Request-Id": request_id},
            json={"model_id": f"rid-{request_id}", "data_tags": ["rid-no-such-tag"],
                  "callback_url": receiver.url(f"/done?token={token}")},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        assert response.headers["X-Request-Id"] == request_id
        receiver.wait_for(1, timeout=60)

    # Then the worker's lines of both tasks carry the id, and the callback's token is not logged
    deadline = time.monotonic() + 10
    tasks: set[str] = set()
    while time.monotonic() < deadline:
        lines = _worker_lines(stack)
        tasks = {str(line.get("task")) for line in lines if line.get("request_id") == request_id}
        if {TASK_TRAIN, TASK_DELIVER_CALLBACK} <= tasks:
            break
        time.sleep(0.2)
    assert {TASK_TRAIN, TASK_DELIVER_CALLBACK} <= tasks
    for path in stack.data_dir.glob("*.log"):
        assert token not in path.read_text(errors="replace")
