"""Fairness between tenants through a real prefork worker with concurrency 2 (issue #19)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from shared.keys import SCOPES, create_key
from shared.stack.embedded import EmbeddedServer
from tests.helpers.stack import Stack, running_stack
from tests.helpers.training import upload_clustered

RUN = {"data_tags": ["fair"], "hyperparameters": {"epochs": 60, "no_components": 16},
       "evaluation": {"holdout": 0}}


@pytest.fixture
def fair_stack(redis_server: EmbeddedServer, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """One worker of concurrency 2; each tenant may train one run at a time."""
    redis.Redis.from_url(redis_server.url).flushall()
    monkeypatch.setenv("RECSYS_TENANT_CONCURRENCY", "1")
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    with running_stack(redis_server.url, data_dir) as st:
        yield st


def test_another_tenants_run_starts_before_a_busy_tenants_third(
    fair_stack: Stack, http: requests.Session
) -> None:
    st = fair_stack
    key_a = st.api_key
    key_b, _ = create_key(st.redis, "b", list(SCOPES))
    upload_clustered(st, http, "fair", n_users=300, n_items=200)
    st.api_key = key_b
    upload_clustered(st, http, "fair", n_users=300, n_items=200)
    st.api_key = key_a

    # given tenant A submits three runs, then tenant B one
    runs = [("a1", key_a), ("a2", key_a), ("a3", key_a), ("b1", key_b)]
    for model_id, key in runs:
        response = http.post(st.url("/train"), json={"model_id": model_id, **RUN},
                             headers={"apikey": key}, timeout=10)
        assert response.status_code == 202, response.text

    # when the worker works through them
    started: dict[str, float] = {}
    ended: dict[str, float] = {}
    waiting_messages: set[str] = set()
    most_of_a_at_once = 0
    deadline = time.monotonic() + 180
    while len(ended) < len(runs) and time.monotonic() < deadline:
        running_a = 0
        for model_id, key in runs:
            status = http.get(st.url(f"/status/{model_id}"), headers={"apikey": key},
                              timeout=10).json()
            now = time.monotonic()
            if status["phase"] == "queued":
                waiting_messages.add(status["message"])
            else:
                started.setdefault(model_id, now)
            if status["status"] != "running":
                ended.setdefault(model_id, now)
            elif model_id.startswith("a") and status["phase"] != "queued":
                running_a += 1
        most_of_a_at_once = max(most_of_a_at_once, running_a)
        time.sleep(0.05)

    # then B's run started before A's second (and third), and all completed
    assert set(ended) == {m for m, _ in runs}, (started, ended)
    for model_id, key in runs:
        final = http.get(st.url(f"/status/{model_id}"), headers={"apikey": key},
                         timeout=10).json()
        assert final["status"] == "completed", final
    # (A's runs may start in any order among themselves: a run without a slot is retried)
    a_starts = sorted(started[m] for m in ("a1", "a2", "a3"))
    assert started["b1"] < a_starts[1], started
    assert most_of_a_at_once == 1
    assert any("RECSYS_TENANT_CONCURRENCY" in m for m in waiting_messages), waiting_messages
