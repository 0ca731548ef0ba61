"""Readiness cached per process, and data summaries / dry runs with a time limit (issue #19)."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from flask import Flask

import api.data
import api.ops
from api.app import create_app
from shared.config import Settings

P = "/v1/recommender"


def _app(tmp_path: Path, r: fakeredis.FakeRedis, **settings: Any) -> Flask:
    app = create_app(Settings(data_dir=tmp_path / "var", **settings), redis=r)
    app.config["TESTING"] = True
    return app


def test_readyz_probes_at_most_once_a_second_and_never_waits_on_the_ping(
    tmp_path: Path, fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes: list[float] = []

    def slow_probe(svc: Any) -> tuple[bool, dict[str, str]]:
        probes.append(time.monotonic())
        time.sleep(2.0)  # slower than any worker ping: a call that waited on it shows
        return True, {"redis": "ok", "storage": "ok", "workers": "1 answering"}

    monkeypatch.setattr(api.ops, "probe", slow_probe)
    app = _app(tmp_path, fake_redis)
    client = app.test_client()
    assert client.get("/readyz").status_code == 200  # the first call waits for a result

    def call(_: int) -> float:
        started = time.monotonic()
        response = app.test_client().get("/readyz")
        assert response.status_code == 200 and response.get_json()["status"] == "ready"
        return time.monotonic() - started

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        durations = list(pool.map(call, range(200)))
    elapsed = time.monotonic() - started
    assert max(durations) < 1.5, f"a /readyz call waited {max(durations):.2f} s"
    # one probe at a time, at most one a second
    assert len(probes) <= elapsed + 2
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert all(gap >= 0.99 for gap in gaps), gaps


def test_readyz_reports_a_failing_check_from_the_cache(
    tmp_path: Path, fake_redis: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.ops, "probe", lambda svc: (
        False, {"redis": "ok", "storage": "ok", "workers": "no worker answered a ping"}))
    response = _app(tmp_path, fake_redis).test_client().get("/readyz")
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert "workers" in response.get_json()["error"]["message"]


def _slow_summary(release: threading.Event) -> Any:
    def summary(*args: Any, **kwargs: Any) -> dict[str, Any]:
        release.wait(10)
        return {}
    return summary


def test_a_slow_data_summary_answers_503_try_later_within_its_limit(
    tmp_path: Path, fake_redis: fakeredis.FakeRedis, auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    monkeypatch.setattr(api.data, "summarise_data", _slow_summary(release))
    client = _app(tmp_path, fake_redis, data_summary_time_limit=0.3).test_client()
    try:
        started = time.monotonic()
        response = client.get(f"{P}/dataset", headers=auth)
        assert time.monotonic() - started < 2
        assert response.status_code == 503, response.get_data(as_text=True)
        assert response.get_json()["error"]["code"] == "try_later"
        assert int(response.headers["Retry-After"]) >= 30  # the rate limiter may say later
        # the pool keeps at most two summaries: once both are busy, refused at once
        client.get(f"{P}/dataset", headers=auth)
        started = time.monotonic()
        busy = client.post(f"{P}/dataset", json={}, headers=auth)
        assert busy.status_code == 503 and time.monotonic() - started < 0.2
    finally:
        release.set()


def test_a_slow_dry_run_answers_503_try_later(
    tmp_path: Path, fake_redis: fakeredis.FakeRedis, auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import api.training

    release = threading.Event()
    monkeypatch.setattr(api.training, "select_data", _slow_summary(release))
    client = _app(tmp_path, fake_redis, data_summary_time_limit=0.3).test_client()
    try:
        response = client.post(f"{P}/train", json={"dry_run": True}, headers=auth)
        assert response.status_code == 503 and response.get_json()["error"]["code"] == \
            "try_later"
    finally:
        release.set()


def test_a_quick_data_summary_still_answers(
    client: Any, auth: dict[str, str]
) -> None:
    response = client.get(f"{P}/dataset", headers=auth)
    assert response.status_code == 200, response.get_data(as_text=True)
