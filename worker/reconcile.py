"""The reconciler: runs whose worker vanished are requeued, or ended after too many attempts.

A worker killed mid-run (OOM, SIGKILL, a lost machine) gets its message back
from the broker only after the visibility timeout, hours later. Each running
attempt writes a heartbeat into its run record; this periodic task (beat,
every ``reconcile_interval``) requeues a run whose heartbeat is older than
``heartbeat_stale_after`` and ends it as ``error`` once it has been started
``max_run_attempts`` times, so no run stays ``running`` forever. Queued runs
are left alone while their message may still be in the broker; one queued for
longer than the broker's visibility timeout lost its message (a broker that
lost its data, say) and is enqueued again (a duplicate is harmless: only one
delivery can claim a queued run).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from shared.errors import ServiceError
from shared.runs.lifecycle import (
    active_runs,
    enqueue_run,
    finish_run,
    forget_active,
    requeue_run,
)
from shared.runs.records import FINAL_STATES, get_run, parse_member
from worker.context import WorkerServices

log = logging.getLogger(__name__)


def _queued_since(record: dict[str, Any]) -> float:
    """Epoch seconds since the run has been waiting (creation, or its last requeue)."""
    created = str(record.get("created_at") or "")
    try:
        since = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        since = 0.0
    return max(since, float(record.get("heartbeat") or 0.0))


def reconcile(svc: WorkerServices, now: float | None = None) -> dict[str, int]:
    """One pass over the active runs; returns how many were requeued, failed or forgotten."""
    moment = time.time() if now is None else now
    settings = svc.settings
    outcome = {"requeued": 0, "failed": 0, "cancelled": 0, "forgotten": 0}
    for member in active_runs(svc.redis):  # per active run: a handful at any time
        try:
            tenant, model_id, version = parse_member(member)
        except ValueError:
            forget_active(svc.redis, member)
            continue
        record = get_run(svc.redis, tenant, model_id, version)
        if record is None or record["status"] in FINAL_STATES:
            forget_active(svc.redis, member)
            outcome["forgotten"] += 1
            continue
        if record["phase"] == "queued":
            if _queued_since(record) + settings.visibility_timeout < moment:
                requeue_run(svc.redis, tenant, model_id, version, str(record.get("message")))
                enqueue_run(svc.redis, svc.celery, settings, tenant, model_id, version,
                            int(record["attempts"]) + 1)
                outcome["requeued"] += 1
            continue
        if moment - float(record["heartbeat"]) < settings.heartbeat_stale_after:
            continue
        attempts = int(record["attempts"])
        try:
            if record.get("cancel_requested"):
                finish_run(svc.redis, svc.celery, tenant, model_id, version,
                           phase="cancelled",
                           message="Cancelled; its worker stopped before ending the run.")
                outcome["cancelled"] += 1
            elif attempts >= settings.max_run_attempts:
                finish_run(
                    svc.redis, svc.celery, tenant, model_id, version, phase="failed",
                    message=(
                        f"The worker training this model stopped responding {attempts} "
                        "times (killed, out of memory, or past the hard time limit), so the "
                        "run was given up. Try fewer components or less data, or check the "
                        "workers' logs and memory."),
                )
                outcome["failed"] += 1
            else:
                requeue_run(
                    svc.redis, tenant, model_id, version,
                    f"The worker training this model stopped responding; the run was "
                    f"requeued (attempt {attempts + 1} of {settings.max_run_attempts}).",
                )
                enqueue_run(svc.redis, svc.celery, settings, tenant, model_id, version,
                            attempts + 1)
                outcome["requeued"] += 1
                log.warning("requeued %s (heartbeat %.0f s old)", member,
                            moment - float(record["heartbeat"]))
        except ServiceError:
            log.exception("could not reconcile %s; next pass retries", member)
    return outcome
