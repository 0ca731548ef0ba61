"""Structured logs: JSON lines with request id and tenant, no secrets, ids carried to tasks."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery.app import trace as celery_trace
from flask.testing import FlaskClient

from shared import logs
from shared.logs import (
    TASK_HEADER,
    bound,
    configure_logging,
    current_request_id,
    redact,
    redact_url,
)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Root logging into a buffer in the JSON format, restored afterwards."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    yield stream
    configure_logging("INFO", "json")  # back to stderr
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_a_line_is_one_json_object_with_the_standard_fields(captured: io.StringIO) -> None:
    logging.getLogger("recsys.test").warning("hello %s", "world", extra={"model_id": "m1"})

    (line,) = _lines(captured)
    assert line["message"] == "hello world"
    assert line["level"] == "WARNING"
    assert line["logger"] == "recsys.test"
    assert line["ts"].endswith("Z") and "T" in line["ts"]
    assert line["model_id"] == "m1"
    assert "request_id" not in line, "no context, no empty field"


def test_bound_context_appears_on_every_line_and_is_cleared_after(captured: io.StringIO) -> None:
    log = logging.getLogger("recsys.test")
    with bound(request_id="req-123", tenant="acme"):
        log.info("inside")
        assert current_request_id() == "req-123"
    log.info("outside")

    inside, outside = _lines(captured)
    assert inside["request_id"] == "req-123" and inside["tenant"] == "acme"
    assert "request_id" not in outside and "tenant" not in outside


def test_exceptions_are_logged_as_one_line_with_the_traceback(captured: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("recsys.test").exception("failed")

    (line,) = _lines(captured)
    assert line["message"] == "failed"
    assert "RuntimeError: boom" in line["exc"]


def test_secrets_are_scrubbed_from_messages(captured: io.StringIO) -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    key = "rk_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
    logging.getLogger("recsys.test").info("secret %s key %s", secret, key)

    text = captured.getvalue()
    assert secret not in text and key not in text
    assert "whsec_[redacted]" in text and "rk_[redacted]" in text
    assert redact("no secrets here") == "no secrets here"


def test_callback_urls_lose_query_and_credentials_even_inside_extras(
    captured: io.StringIO,
) -> None:
    url = "https://bob:hunter2@hooks.example.com/done?token=s3cr3t&x=1"
    logging.getLogger("celery.worker.strategy").info(
        "Task received", extra={"data": {"kwargs": repr({"callback_url": url, "n": 'a"b'})}}
    )
    logging.getLogger("recsys.test").info("calling %s", url)

    text = captured.getvalue()
    assert "s3cr3t" not in text and "hunter2" not in text
    lines = _lines(captured)  # still valid JSON
    assert "https://[redacted]@hooks.example.com/done?[redacted]" in lines[1]["message"]
    assert "hooks.example.com/done" in lines[0]["data"]["kwargs"]


def test_urls_are_logged_without_credentials_query_or_fragment() -> None:
    url = "https://user:pw@hooks.example.com:8443/recsys/done?token=abc#frag"
    assert redact_url(url) == "https://hooks.example.com:8443/recsys/done"
    assert redact_url("http://[::1]:9000/x?y=1") == "http://[::1]:9000/x"
    assert redact_url("http://[bad") == "<unparseable url>"


def test_text_format_carries_the_same_facts() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "text", stream=stream)
    try:
        with bound(request_id="r-9"):
            logging.getLogger("recsys.test").info("plain", extra={"status": 200})
    finally:
        configure_logging("INFO", "json")
    text = stream.getvalue()
    assert "[request_id=r-9]" in text and "plain" in text and "status=200" in text


def test_configure_logging_twice_keeps_one_handler() -> None:
    configure_logging("INFO", "json")
    configure_logging("INFO", "json")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_recsys_handler", False)]
    assert len(ours) == 1


def test_publishing_adds_the_request_id_header_only_when_there_is_one() -> None:
    headers: dict[str, Any] = {}
    logs._before_task_publish(headers=headers)
    assert TASK_HEADER not in headers

    with bound(request_id="req-pub"):
        logs._before_task_publish(headers=headers)
    assert headers[TASK_HEADER] == "req-pub"


def test_a_task_runs_with_its_request_id_and_passes_it_to_the_tasks_it_publishes(
    captured: io.StringIO,
) -> None:
    # Given a task whose message carried a request id
    task = SimpleNamespace(
        name="recsys.train", request=SimpleNamespace(**{TASK_HEADER: "req-7"}, headers=None)
    )
    task.request.recsys_tenant = "acme"
    logs._task_prerun(task_id="t-1", task=task)
    # When it logs and publishes its callback delivery
    logging.getLogger("recsys.test").info("training")
    child_headers: dict[str, Any] = {}
    logs._before_task_publish(headers=child_headers)
    logs._task_postrun(task_id="t-1", state="SUCCESS")
    logging.getLogger("recsys.test").info("between tasks")

    # Then its lines and the child's message carry the id, and nothing leaks past the task
    lines = _lines(captured)
    started, training, ended, between = lines
    assert started["message"] == "task started" and started["task"] == "recsys.train"
    assert training["request_id"] == "req-7" and training["task_id"] == "t-1"
    assert training["tenant"] == "acme"
    assert ended["state"] == "SUCCESS" and ended["request_id"] == "req-7"
    assert child_headers[TASK_HEADER] == "req-7"
    assert child_headers["recsys_tenant"] == "acme"
    assert "request_id" not in between and "task_id" not in between
    assert "tenant" not in between


def test_api_lines_carry_the_request_id_and_tenant(
    client: FlaskClient, auth: dict[str, str], captured: io.StringIO
) -> None:
    response = client.get(
        "/v1/recommender/webhook_secret", headers={**auth, "X-Request-Id": "client-id-1"}
    )
    assert response.headers["X-Request-Id"] == "client-id-1"

    access = [line for line in _lines(captured) if line["logger"] == "recsys.access"]
    assert access, "one access line per request"
    line = access[-1]
    assert line["request_id"] == "client-id-1"
    assert line["tenant"] == "acme"
    assert line["status"] == response.status_code
    assert line["endpoint"] == "/v1/recommender/webhook_secret"
    assert line["duration_ms"] >= 0
    assert auth["apikey"] not in captured.getvalue(), "the API key is never logged"


def test_an_overlong_request_id_is_cut(client: FlaskClient, captured: io.StringIO) -> None:
    response = client.get("/healthz", headers={"X-Request-Id": "x" * 1000})
    assert response.headers["X-Request-Id"] == "x" * 128


def _housekeeping_run(task: str, state: str = "SUCCESS") -> None:
    """The lines one scheduled run writes, shaped as Celery and this service write them."""
    logging.getLogger("celery.beat").info("Scheduler: Sending due task %s (%s)", "scan", task)
    received = {"id": "t1", "name": task, "args": "()", "kwargs": "{}", "eta": None}
    logging.getLogger("celery.worker.strategy").info(
        celery_trace.LOG_RECEIVED, received, extra={"data": received})
    token = logs.task_name_var.set(task)
    try:
        logging.getLogger("recsys.task").info("task started")
        logging.getLogger("worker.callbacks").info("callback wh_1 delivered")
        done = {"id": "t1", "name": task, "return_value": "1", "runtime": 0.01}
        logging.getLogger("celery.app.trace").info(
            celery_trace.LOG_SUCCESS, done, extra={"data": done})
        logging.getLogger("recsys.task").info("task ended", extra={"state": state})
    finally:
        logs.task_name_var.reset(token)


def test_routine_lines_of_housekeeping_tasks_are_left_out(captured: io.StringIO) -> None:
    _housekeeping_run("recsys.scan_callbacks")
    _housekeeping_run("recsys.train")
    _housekeeping_run("recsys.reconcile_runs", state="FAILURE")
    lines = [(line["logger"], line["message"], line.get("task")) for line in _lines(captured)]
    # the scan: only what the task itself said
    assert [m for _, m, t in lines if t == "recsys.scan_callbacks"] == [
        "callback wh_1 delivered"]
    assert not any("recsys.scan_callbacks" in m for _, m, _ in lines)
    # any other task, and a failed housekeeping run, keep every line
    assert sum("recsys.train" in m or t == "recsys.train" for _, m, t in lines) == 6
    assert ("recsys.task", "task ended", "recsys.reconcile_runs") in lines


def test_routine_lines_show_at_debug(captured: io.StringIO) -> None:
    logging.getLogger().setLevel(logging.DEBUG)
    _housekeeping_run("recsys.scan_callbacks")
    assert len(_lines(captured)) == 6
