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
delivery can claim a queued run). A queued run waiting for a slot of its
tenant (:mod:`shared.runs.slots`) retries every few seconds from its worker's
memory; one that stopped retrying for ``heartbeat_stale_after`` lost that
worker and is enqueued again at once.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from shared.errors import ServiceError
from shared.runs import slots
from shared.runs.records import FINAL_STATES
from shared.runs.ref import RunRef
from shared.runs.service import Runs
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


def _waiting_message_lost(record: dict[str, Any], now: float, stale_after: float) -> bool:
    """A run waiting for a tenant slot touches its heartbeat at each retry (seconds apart)."""
    waiting = str(record.get("message") or "").startswith(slots.WAITING_PREFIX)
    return waiting and now - float(record.get("heartbeat") or 0.0) > stale_after


def reconcile(svc: WorkerServices, now: float | None = None) -> dict[str, int]:
    """One pass over the active runs; returns how many were requeued, failed or forgotten."""
    moment = time.time() if now is None else now
    runs = svc.runs
    outcome = {"requeued": 0, "failed": 0, "cancelled": 0, "forgotten": 0}
    for member in runs.active():  # per active run: a handful at any time
        try:
            ref = RunRef.parse(member)
        except ValueError:
            runs.forget(member)
            continue
        record = runs.record(ref)
        if record is None or record["status"] in FINAL_STATES:
            runs.forget(member)
            outcome["forgotten"] += 1
            continue
        if record["phase"] == "queued":
            if _waiting_message_lost(record, moment, runs.settings.heartbeat_stale_after):
                # it was waiting for a tenant slot and stopped retrying: its retry
                # (held in its worker's memory) died with that worker
                runs.requeue(ref, "Queued; the worker holding this waiting run stopped, so "
                                  "it was queued again.")
                runs.enqueue(ref, int(record["attempts"]) + 1)
                outcome["requeued"] += 1
            elif _queued_since(record) + runs.settings.visibility_timeout < moment:
                runs.requeue(ref, str(record.get("message")))
                runs.enqueue(ref, int(record["attempts"]) + 1)
                outcome["requeued"] += 1
            continue
        if record["phase"] == "tuning":
            continue  # a search's trials are watched by worker/tuning/search.py's check
        age = moment - float(record["heartbeat"])
        if age < runs.settings.heartbeat_stale_after:
            continue
        try:
            outcome[_recover(runs, ref, record, age)] += 1
        except ServiceError:
            log.exception("could not reconcile %s; next pass retries", member)
    return outcome


def _recover(runs: Runs, ref: RunRef, record: dict[str, Any], age: float) -> str:
    """End or requeue a started run whose heartbeat is ``age`` seconds old; the outcome."""
    attempts = int(record["attempts"])
    cap = runs.settings.max_run_attempts
    if record.get("cancel_requested"):
        runs.finish(ref, phase="cancelled",
                    message="Cancelled; its worker stopped before ending the run.")
        return "cancelled"
    if attempts >= cap:
        runs.finish(
            ref, phase="failed",
            message=(
                f"The worker training this model stopped responding {attempts} "
                "times (killed, out of memory, or past the hard time limit), so the "
                "run was given up. Try fewer components or less data, or check the "
                "workers' logs and memory."),
        )
        return "failed"
    runs.requeue(
        ref,
        f"The worker training this model stopped responding; the run was "
        f"requeued (attempt {attempts + 1} of {cap}).",
    )
    runs.enqueue(ref, attempts + 1)
    log.warning("requeued %s (heartbeat %.0f s old)", ref.member, age)
    return "requeued"
