"""Celery tasks of a search: thin glue onto :mod:`worker.tuning.search`."""

from __future__ import annotations

from typing import Any

from celery import Task

from shared.contracts import TASK_TUNE, TASK_TUNE_CHECK, TASK_TUNE_TRIAL
from shared.runs import slots
from shared.runs.ref import RunRef
from worker.celery_app import app
from worker.context import worker_services


# The parent only claims the run and enqueues trials; a duplicate delivery skips.
@app.task(name=TASK_TUNE, bind=True, acks_late=True, reject_on_worker_lost=True)
def tune(self: Task, tenant: str, model_id: str, version: int) -> dict[str, Any]:
    """Start a search (see :mod:`worker.tuning.search`)."""
    from worker.tuning.search import start_search

    return start_search(worker_services(self.app), RunRef(tenant, model_id, int(version)))


# Late acks without reject-on-worker-lost: a trial whose process is killed is not run
# again; the check records it as failed once its heartbeat is stale, and the search goes
# on. A message redelivered after a whole worker was lost finds its trial ended and skips.
@app.task(name=TASK_TUNE_TRIAL, bind=True, acks_late=True, reject_on_worker_lost=False,
          max_retries=None)
def tune_trial(self: Task, tenant: str, model_id: str, version: int,
               trial: int) -> dict[str, Any]:
    """Run one trial of a search."""
    from worker.tuning.search import execute_trial

    svc = worker_services(self.app)
    settings = svc.settings
    # Trials share the tenant's training slots with its runs (RECSYS_TENANT_CONCURRENCY),
    # so one tenant's search never holds every worker while another tenant waits.
    with slots.tenant_slot(svc.redis, tenant, settings) as slot:
        if slot.held:
            return execute_trial(svc, RunRef(tenant, model_id, int(version)), int(trial),
                                 str(self.request.hostname or "unknown"))
    raise self.retry(countdown=slots.retry_delay())  # wait in the broker, not on a worker


@app.task(name=TASK_TUNE_CHECK, bind=True, ignore_result=True, send_events=False)
def tune_check(self: Task) -> dict[str, int]:
    """End lost trials as failed, and settle searches that ended."""
    from worker.tuning.search import check

    return check(worker_services(self.app))
