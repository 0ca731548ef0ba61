"""/metrics: request counts and latency per URL rule, queue depth and worker counters from Redis."""

from __future__ import annotations

import math
import socket

import fakeredis
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from shared.config import Settings
from shared.metrics import read_counters, record_delivery, record_run_finished
from shared.registry import connect


def _samples(client: FlaskClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _down_redis() -> redis.Redis:
    """A client configured as the service's, aimed at a port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return connect(Settings(redis_url=f"redis://127.0.0.1:{port}/0"))


def test_requests_are_counted_per_url_rule_method_and_status(app: Flask) -> None:
    app.add_url_rule("/things/<thing_id>", "thing", lambda thing_id: {"id": thing_id})
    client = app.test_client()
    for thing in ("a", "b", "c"):
        assert client.get(f"/things/{thing}").status_code == 200
    client.get("/no/such/path/1")
    client.get("/no/such/path/2")
    client.open("/healthz", method="BREW")

    samples = _samples(client)
    total = "recsys_http_requests_total"
    assert _value(samples, total, endpoint="/things/<thing_id>", method="GET", status="200") == 3
    assert _value(samples, total, endpoint="unmatched", method="GET", status="404") == 2
    assert _value(samples, total, endpoint="unmatched", method="other", status="405") == 1
    assert not any("/things/a" in dict(labels).get("endpoint", "") for _, labels in samples)
    count = _value(
        samples, "recsys_http_request_duration_seconds_count",
        endpoint="/things/<thing_id>", method="GET",
    )
    assert count == 3
    assert _value(
        samples, "recsys_http_request_duration_seconds_bucket",
        endpoint="/things/<thing_id>", method="GET", le="+Inf",
    ) == 3


def test_error_responses_are_counted_with_their_status(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    client.get("/v1/recommender/webhook_secret")  # no key: 401
    client.get("/v1/recommender/webhook_secret", headers=auth)
    samples = _samples(client)
    rule = "/v1/recommender/webhook_secret"
    total = "recsys_http_requests_total"
    assert _value(samples, total, endpoint=rule, method="GET", status="401") == 1
    assert _value(samples, total, endpoint=rule, method="GET", status="200") == 1


def test_queue_depth_is_read_from_the_celery_queues(
    client: FlaskClient, fake_redis: fakeredis.FakeRedis
) -> None:
    fake_redis.rpush("train", "m1", "m2", "m3")
    fake_redis.rpush("train\x06\x169", "urgent")
    fake_redis.rpush("callbacks", "c1")
    fake_redis.hset("unacked", mapping={"tag1": "x", "tag2": "y"})

    samples = _samples(client)
    assert _value(samples, "recsys_redis_up") == 1
    assert _value(samples, "recsys_queue_depth", queue="train") == 4
    assert _value(samples, "recsys_queue_depth", queue="callbacks") == 1
    assert _value(samples, "recsys_queue_unacked") == 2


def test_runs_and_deliveries_recorded_by_workers_are_exported(
    client: FlaskClient, fake_redis: fakeredis.FakeRedis
) -> None:
    record_run_finished(fake_redis, "completed", 42.0)
    record_run_finished(fake_redis, "completed", 3000.0)
    record_run_finished(fake_redis, "error", 5.0)
    record_run_finished(fake_redis, "something-new", 1.0)
    for outcome in ("delivered", "delivered", "retry", "failed"):
        record_delivery(fake_redis, outcome)

    samples = _samples(client)
    runs = "recsys_training_runs_total"
    assert _value(samples, runs, outcome="completed") == 2
    assert _value(samples, runs, outcome="error") == 1
    assert _value(samples, runs, outcome="cancelled") == 0
    assert _value(samples, runs, outcome="other") == 1
    hist = "recsys_training_run_duration_seconds"
    assert _value(samples, f"{hist}_sum", outcome="completed") == 3042.0
    assert _value(samples, f"{hist}_count", outcome="completed") == 2
    assert _value(samples, f"{hist}_bucket", outcome="completed", le="60.0") == 1
    assert _value(samples, f"{hist}_bucket", outcome="completed", le="3600.0") == 2
    assert _value(samples, f"{hist}_bucket", outcome="completed", le="+Inf") == 2
    deliveries = "recsys_callback_deliveries_total"
    assert _value(samples, deliveries, outcome="delivered") == 2
    assert _value(samples, deliveries, outcome="retry") == 1
    assert _value(samples, deliveries, outcome="failed") == 1


def test_a_redis_outage_still_exports_request_metrics(settings: Settings) -> None:
    client = create_app(settings, redis=_down_redis()).test_client()
    client.get("/healthz")

    samples = _samples(client)
    assert _value(samples, "recsys_redis_up") == 0
    assert _value(
        samples, "recsys_http_requests_total", endpoint="/healthz", method="GET", status="200"
    ) == 1
    assert not any(name == "recsys_queue_depth" for name, _ in samples)


def test_recording_never_raises_when_redis_is_down() -> None:
    down = _down_redis()
    record_run_finished(down, "completed", 1.0)
    record_delivery(down, "delivered")
    with pytest.raises(redis.ConnectionError):
        read_counters(down)


def test_odd_durations_are_recorded_safely(fake_redis: fakeredis.FakeRedis) -> None:
    record_run_finished(fake_redis, "completed", math.nan)
    record_run_finished(fake_redis, "completed", -5)
    record_run_finished(fake_redis, "completed", 10**9)
    hist = read_counters(fake_redis).runs["completed"]
    assert hist.count == 3
    assert hist.buckets[0] == ("10", 2.0)
    assert hist.buckets[-1] == ("+Inf", 3.0)


def test_metrics_needs_no_api_key_and_is_not_in_the_error_format(client: FlaskClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert b"recsys_http_requests_total" in response.data or b"recsys_redis_up" in response.data
