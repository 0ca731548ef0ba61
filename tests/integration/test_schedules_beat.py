"""Schedules through real beat processes (redbeat) and a real worker, on a Redis-compatible
server with its append-only file: one firing per tick with two beats running, ticks skipped
while the model trains, and the schedule kept across restarts of beat and of the server.

The contract's shortest interval is a minute; the test lowers it to 3 s with
``RECSYS_SCHEDULE_MIN_INTERVAL_MINUTES`` so that many ticks fit in a minute.
"""

from __future__ import annotations

import itertools
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.stack.embedded import start_embedded
from shared.stack.procs import stop_group
from tests.helpers.stack import ROOT, Stack, running_stack
from tests.helpers.training import upload_clustered

pytestmark = pytest.mark.integration

INTERVAL_MINUTES = 0.05  # 3 s
#: Ticks watched with two beats running: twice as many firings would show in 6 already.
TICKS = 6


def _beat(stack: Stack, name: str) -> subprocess.Popen[bytes]:
    log = open(stack.data_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        # Supervised as `make run` runs it (Procfile): a Redis restart can end beat
        # (shared/stack/supervise.py), and the supervisor starts it again.
        return subprocess.Popen(
            [sys.executable, "-m", "shared.stack.supervise", "--",
             sys.executable, "-m", "celery", "-A", "worker.celery_app", "beat",
             "--scheduler", "redbeat.RedBeatScheduler", "--loglevel", "INFO",
             "--schedule", str(stack.data_dir / f"{name}-schedule")],
            cwd=ROOT, env=stack.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    finally:
        log.close()


def _ticks(stack: Stack, http: requests.Session, model_id: str) -> list[dict[str, Any]]:
    """Recorded ticks, oldest first (the schedule keeps the newest 20)."""
    got = http.get(stack.url(f"/models/{model_id}/schedule"), headers=stack.headers(),
                   timeout=10)
    assert got.status_code == 200, got.text
    return list(reversed(got.json()["recent_ticks"]))


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (requests.RequestException, AssertionError):
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _at(tick: dict[str, Any]) -> float:
    return datetime.fromisoformat(tick["at"].replace("Z", "+00:00")).timestamp()


@pytest.fixture
def beat_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Stack, Any]]:
    monkeypatch.setenv("RECSYS_SCHEDULE_MIN_INTERVAL_MINUTES", str(INTERVAL_MINUTES))
    monkeypatch.setenv("RECSYS_BEAT_MAX_LOOP_INTERVAL", "1")
    directory = tmp_path / "redis"
    server = start_embedded(directory)
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    holder = {"server": server}
    try:
        with running_stack(server.url, data_dir) as st:
            yield st, holder
    finally:
        holder["server"].stop()


def test_a_schedule_fires_once_per_tick_skips_while_training_and_survives_restarts(
    beat_stack: tuple[Stack, Any], http: requests.Session
) -> None:
    stack, holder = beat_stack
    stack.start_worker(queues="callbacks", concurrency=1)  # ticks never wait for training
    beats = [_beat(stack, "beat-a"), _beat(stack, "beat-b")]
    try:
        # Given data, and a schedule that trains on every tick (long enough to span ticks)
        upload_clustered(stack, http, "sched")
        put = http.put(stack.url("/models/sched/schedule"), headers=stack.headers(), json={
            "interval_minutes": INTERVAL_MINUTES, "only_with_new_data": False,
            "train": {"data_tags": ["sched"], "evaluation": {"holdout": 0},
                      "hyperparameters": {"epochs": 400, "no_components": 16}}},
            timeout=10)
        assert put.status_code == 200, put.text

        # When two beats run for a while
        ticks = _wait_for(lambda: (t := _ticks(stack, http, "sched")) and len(t) >= TICKS and t,
                          150, f"{TICKS} ticks")

        # Then each tick fired once: as many ticks as intervals went by, not twice as many
        span = _at(ticks[-1]) - _at(ticks[0])
        assert len(ticks) - 1 <= span / (INTERVAL_MINUTES * 60) * 1.25 + 1, ticks
        gaps = [_at(b) - _at(a) for a, b in itertools.pairwise(ticks)]
        assert sorted(gaps)[len(gaps) // 2] >= 2, (gaps, ticks)
        outcomes = [t["outcome"] for t in ticks]
        # and ticks while the model trained were skipped, the others started a run
        assert "started" in outcomes and "skipped_already_training" in outcomes, outcomes
        started = [t["version"] for t in ticks if t["outcome"] == "started"]
        assert started == sorted(set(started))

        # When beat restarts (both stop, one starts again)
        for proc in beats:
            stop_group(proc, signal.SIGTERM, timeout=30)
        beats = [_beat(stack, "beat-c")]
        seen = len(_ticks(stack, http, "sched"))
        last = _ticks(stack, http, "sched")[-1]["at"]
        # Then the schedule goes on ticking
        _wait_for(lambda: _ticks(stack, http, "sched")[-1]["at"] > last, 60,
                  "a tick after beat restarted")
        assert seen >= TICKS

        # When the server is killed (no clean shutdown: the append-only file is what
        # keeps the data) and started again on the same directory
        server = holder["server"]
        server.kill()
        _wait_for(lambda: _port_free(server.port), 30, "the server's port to be free")
        holder["server"] = start_embedded(server.directory)
        assert holder["server"].port == server.port
        # Then the schedule is still there and ticks resume
        last = _wait_for(lambda: _ticks(stack, http, "sched")[-1]["at"], 60, "the schedule")
        _wait_for(lambda: _ticks(stack, http, "sched")[-1]["at"] > last, 120,
                  "a tick after the server restarted")
    finally:
        for proc in beats:
            stop_group(proc, signal.SIGKILL, timeout=30)
