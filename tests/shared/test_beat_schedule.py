"""Beat runs on celery-redbeat: the periodic housekeeping tasks become entries in Redis."""

from __future__ import annotations

import fakeredis

from shared.config import Settings
from shared.contracts import TASK_RECONCILE_RUNS, TASK_SCAN_CALLBACKS
from worker.celery_app import make_worker_app


def test_the_periodic_tasks_keep_firing_under_redbeat(fake_redis: fakeredis.FakeRedis) -> None:
    from redbeat import RedBeatScheduler, RedBeatSchedulerEntry

    app = make_worker_app(Settings())
    assert app.conf.beat_scheduler == "redbeat.RedBeatScheduler"
    app.redbeat_redis = fake_redis

    RedBeatScheduler(app=app)  # what `celery beat` does at start: load beat_schedule

    due = fake_redis.zrange("recsys:redbeat::schedule", 0, -1)
    assert set(due) >= {"recsys:redbeat:reconcile-runs", "recsys:redbeat:scan-callbacks"}
    tasks = {RedBeatSchedulerEntry.from_key(key, app=app).task for key in due}
    assert {TASK_RECONCILE_RUNS, TASK_SCAN_CALLBACKS} <= tasks
