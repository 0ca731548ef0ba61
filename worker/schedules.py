"""The schedule tick task: beat (redbeat) sends it; :mod:`shared.fresh.ticks` decides."""

from __future__ import annotations

from typing import Any

from celery import Task

from shared.contracts import TASK_SCHEDULE_TICK
from shared.fresh.schedules import bind_redis
from shared.fresh.ticks import run_tick
from worker.celery_app import app
from worker.context import worker_services


@app.task(name=TASK_SCHEDULE_TICK, bind=True, ignore_result=True)
def schedule_tick(self: Task, tenant: str, model_id: str) -> dict[str, Any]:
    """One tick of ``model_id``'s schedule: skip, refuse, or submit an ordinary run."""
    svc = worker_services(self.app)
    bind_redis(self.app, svc.redis)
    return run_tick(svc.runs, self.app, svc.storage, tenant, model_id)
