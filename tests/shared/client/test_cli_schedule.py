"""``recsys schedule set`` against the fake API: the schedule body it sends."""

from __future__ import annotations

import json

from tests.helpers.fake_api import FakeApi, run

SCHEDULE = {"model_id": "m1", "interval_minutes": 60, "warm_start": False,
            "only_with_new_data": True, "next_run_at": "2026-12-01T00:00:00Z",
            "last_tick": None, "recent_ticks": []}


def test_a_train_schedule_sends_a_train_body(fake_api: FakeApi) -> None:
    fake_api.on("PUT", "/models/m1/schedule", (200, {**SCHEDULE, "train": {}}))
    result = run(fake_api, "schedule", "set", "m1", "--every", "60", "--tag", "shop",
                 "--warm-start")
    assert result.exit_code == 0, result.output
    body = json.loads(fake_api.last("PUT", "/models/m1/schedule").body)
    assert body["train"]["data_tags"] == ["shop"] and body["warm_start"] is True
    assert "tune" not in body


def test_tune_schedules_a_search_of_that_many_trials(fake_api: FakeApi) -> None:
    fake_api.on("PUT", "/models/m1/schedule", (200, {**SCHEDULE, "tune": {}}))
    result = run(fake_api, "schedule", "set", "m1", "--cron", "0 3 * * 0", "--tune", "12",
                 "--tag", "shop")
    assert result.exit_code == 0, result.output
    body = json.loads(fake_api.last("PUT", "/models/m1/schedule").body)
    assert body["tune"] == {"data_tags": ["shop"], "search": {"trials": 12}}
    assert body["cron"] == "0 3 * * 0" and "train" not in body
