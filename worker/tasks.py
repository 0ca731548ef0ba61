"""Celery tasks: thin glue between the queue and the functions that do the work."""

from __future__ import annotations

import time
from typing import Any

from celery import Task, signals

from shared.contracts import (
    PROGRESS_STATE,
    TASK_PROGRESS_PROBE,
    TASK_RECONCILE_RUNS,
    TASK_TRAIN,
    ProgressMeta,
)
from shared.runs import slots
from shared.runs.ref import RunRef
from worker.candidates import TASK_TRAIN_CANDIDATE
from worker.celery_app import app
from worker.context import worker_services
from worker.flower import on_task_revoked, send_progress

signals.task_revoked.connect(on_task_revoked, weak=False, dispatch_uid="recsys.revoked")


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


# Late acks with reject-on-worker-lost: a run whose worker dies is delivered again; the
# per-model lock in the runner keeps a duplicate delivery from training the model twice.
# No retry cap: a task retries only while its tenant's slots are all held (see slots).
@app.task(name=TASK_TRAIN, bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=None)
def train_model(self: Task, tenant: str, model_id: str, version: int) -> dict[str, Any]:
    """Train one version of a model (see :mod:`worker.runner`), in one of the tenant's slots."""
    from worker.runner import execute_run

    svc = worker_services(self.app)
    ref = RunRef(tenant, model_id, int(version))

    def report(meta: ProgressMeta) -> None:
        if self.request.id:
            self.update_state(state=PROGRESS_STATE, meta=dict(meta))
            send_progress(self, meta)

    settings = svc.settings
    with slots.tenant_slot(svc.redis, tenant, settings) as slot:
        if slot.held:
            return execute_run(svc, ref, report)
    # Every slot of the tenant is busy: wait in the broker, not on this worker.
    if not slots.note_waiting(svc.redis, ref, settings.tenant_concurrency):
        return {"outcome": "skipped", "reason": "ended while waiting for a slot"}
    raise self.retry(countdown=slots.retry_delay())


# Late acks without reject-on-worker-lost: a helper whose worker dies is not run again; its
# claim's lease runs out and the run fits the candidate itself (worker/candidates.py).
@app.task(name=TASK_TRAIN_CANDIDATE, bind=True, acks_late=True, reject_on_worker_lost=False)
def train_candidate(self: Task, tenant: str, model_id: str, version: int,
                    attempt: str) -> dict[str, Any]:
    """Fit a run's candidate without metadata features, in one of the tenant's slots."""
    from worker.candidates import help_run

    svc = worker_services(self.app)
    settings = svc.settings
    with slots.tenant_slot(svc.redis, tenant, settings) as slot:
        if slot.held:
            return help_run(svc, RunRef(tenant, model_id, int(version)), attempt)
    return {"outcome": "skipped", "reason": "no free slot: the run fits it itself"}


# Housekeeping sends no task events, so Flower's list shows training (worker/flower.py).
@app.task(name=TASK_RECONCILE_RUNS, bind=True, ignore_result=True, send_events=False)
def reconcile_runs(self: Task) -> dict[str, int]:
    """Requeue or end runs whose worker stopped sending heartbeats."""
    from worker.reconcile import reconcile

    return reconcile(worker_services(self.app))
