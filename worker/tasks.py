"""Celery tasks: thin glue between the queue and the pure functions that do the work."""

from __future__ import annotations

import time
from typing import Any

from celery import Task

from shared.contracts import (
    PROGRESS_STATE,
    TASK_PROGRESS_PROBE,
    TASK_RECONCILE_RUNS,
    ProgressMeta,
)
from worker.celery_app import app


@app.task(name=TASK_PROGRESS_PROBE, bind=True)
def progress_probe(self: Task, steps: int = 3, delay: float = 0.2) -> dict[str, Any]:
    """Walk through ``steps`` PROGRESS states; proves queue, worker and result backend."""
    steps = max(1, min(int(steps), 100))
    for step in range(1, steps + 1):
        meta: ProgressMeta = {
            "phase": "training",
            "progress": int(100 * step / (steps + 1)),
            "message": f"Probe step {step} of {steps}.",
        }
        self.update_state(state=PROGRESS_STATE, meta=dict(meta))
        time.sleep(max(0.0, min(float(delay), 5.0)))
    return {"steps": steps, "done": True}


@app.task(name=TASK_RECONCILE_RUNS, ignore_result=True)
def reconcile_runs() -> None:
    """Requeue or fail runs whose worker stopped sending heartbeats (placeholder)."""
