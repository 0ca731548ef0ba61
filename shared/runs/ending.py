"""How a training run ends: failed or cancelled (:func:`finish_run`), or completed.

:func:`finish_run` and :func:`complete_run` are the only ways a run ends. Each
is one WATCH/MULTI transaction guarded by the state it expects, and only the
caller whose transaction ends the run frees the model and schedules the
callback, so the callback is scheduled exactly once per run.
:func:`complete_run` makes the version serving in the same transaction that
marks the run completed (call it after the artifact is durable on storage).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

import redis
from celery import Celery

from shared import quotas
from shared.contracts import Phase, RunState, RunStatus
from shared.errors import Conflict, NotFound
from shared.metrics import record_run_finished
from shared.registry import redis_guard
from shared.runs.records import (
    ACTIVE_RUNS,
    FINAL_STATES,
    active_key,
    dump,
    encode_fields,
    get_model,
    get_run,
    get_status,
    model_key,
    now_iso,
    transact,
)
from shared.runs.ref import RunRef


def _release_active(r: redis.Redis, ref: RunRef) -> None:
    key = active_key(ref.tenant, ref.model_id)
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                if pipe.get(key) != str(ref.version):
                    pipe.unwatch()
                else:
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
                break
            except redis.WatchError:
                continue
    r.srem(ACTIVE_RUNS, ref.member)
    r.srem(quotas.active_runs_key(ref.tenant), f"{ref.model_id}/{ref.version}")


def _outcome(status: RunStatus) -> str:
    if status["status"] == "completed":
        return "completed"
    return "cancelled" if status["phase"] == "cancelled" else "error"


def _duration_s(status: RunStatus) -> float:
    """Seconds from start to end; 0 for a run that ended before a worker started it."""
    start, end = status["start_timestamp"], status["end_timestamp"]
    if not start or not end:
        return 0.0
    return max(0.0, (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())


def _after_end(r: redis.Redis, celery: Celery | None, ref: RunRef,
               record: dict[str, Any]) -> RunStatus:
    """What follows every end of a run, once: free the model and schedule the callback."""
    from shared.webhooks.deliveries import schedule_for_run

    with redis_guard("ending a training run"):
        _release_active(r, ref)
    status = get_status(r, ref.tenant, ref.model_id, ref.version)
    record_run_finished(r, _outcome(status), _duration_s(status))
    url = record.get("callback_url")
    if url and celery is not None:
        schedule_for_run(r, celery, ref.tenant, ref.model_id, ref.version, url, status)
    return status


def finish_run(
    r: redis.Redis,
    celery: Celery | None,
    ref: RunRef,
    *,
    phase: Phase,
    message: str,
    owner: str | None = None,
    only_if_queued: bool = False,
    fields: Mapping[str, Any] | None = None,
) -> RunStatus | None:
    """End a run as ``error`` (phase failed or cancelled); None when it had already ended.

    With ``owner`` the end only applies while that attempt owns the run; with
    ``only_if_queued`` only while no worker has started it. Without ``celery``
    no callback is scheduled (the broker is known to be unreachable).
    """
    state: RunState = "error"

    def update(record: dict[str, Any]) -> dict[str, str] | None:
        if record["status"] in FINAL_STATES:
            return None
        if owner is not None and record.get("owner") != owner:
            return None
        if only_if_queued and record["phase"] != "queued":
            return None
        return {"status": state, "phase": phase, "message": message,
                "end_timestamp": now_iso(), "owner": "", **encode_fields(fields)}

    record = transact(r, ref.key, update)
    if record is None:
        return None
    return _after_end(r, celery, ref, record)


def _keep(kept: list[int], version: int, keep_versions: int,
          pinned: int | None = None) -> tuple[list[int], list[int]]:
    """(versions kept, versions dropped) once ``version`` joins the ``kept`` ones.

    A ``pinned`` serving version is always kept, beyond the newest ``keep_versions``.
    """
    versions = sorted({*kept, version})
    keep = set(versions[-keep_versions:]) | ({pinned} if pinned in versions else set())
    return sorted(keep), [v for v in versions if v not in keep]


def _pinned(pipe: redis.client.Pipeline, mkey: str) -> int | None:
    """The serving version when an operator pinned it (``POST .../serve``), else None."""
    pinned, serving = cast(list[str | None], pipe.hmget(mkey, ["pinned", "serving_version"]))
    return int(serving) if pinned and serving else None


def complete_run(
    r: redis.Redis,
    celery: Celery | None,
    ref: RunRef,
    *,
    owner: str,
    keep_versions: int,
    message: str,
    model_fields: Mapping[str, str],
    fields: Mapping[str, Any] | None = None,
) -> tuple[RunStatus | None, list[int]]:
    """Mark the run completed and make its version serving in one transaction.

    Call only after every artifact file is durable. Returns the status (None
    when this attempt no longer owns the run) and the versions no longer kept.
    """
    rkey, mkey = ref.key, model_key(ref.tenant, ref.model_id)
    with redis_guard("completing a training run"), r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(rkey, mkey)  # type: ignore[no-untyped-call]
                fields_now = cast(list[str | None], pipe.hmget(rkey, ["status", "owner"]))
                status, current_owner = fields_now
                if status in FINAL_STATES or current_owner != owner:
                    pipe.unwatch()
                    return None, []
                kept = json.loads(cast(str | None, pipe.hget(mkey, "versions")) or "[]")
                pin = _pinned(pipe, mkey)
                versions, dropped = _keep(kept, ref.version, keep_versions, pin)
                changes = {"status": "completed", "phase": "done", "progress": "100",
                           "message": message if pin is None else message + (
                               f" Kept as version {ref.version}; version {pin} stays serving "
                               "(pinned with POST /models/<model_id>/serve)."),
                           "end_timestamp": now_iso(), "owner": "", **encode_fields(fields)}
                model_changes = {**model_fields, "versions": dump(versions),
                                 "updated_at": now_iso()}
                if pin is None:
                    model_changes["serving_version"] = str(ref.version)
                pipe.multi()
                pipe.hset(rkey, mapping=changes)
                pipe.hset(mkey, mapping=model_changes)
                pipe.execute()
                break
            except redis.WatchError:
                continue
    record = get_run(r, ref.tenant, ref.model_id, ref.version) or {}
    return _after_end(r, celery, ref, record), dropped


def request_cancel(
    r: redis.Redis, celery: Celery | None, tenant: str, model_id: str
) -> tuple[RunStatus, bool]:
    """Cancel the model's queued or running run; (status, ended now).

    A queued run ends at once; a running one is flagged and its worker ends it
    after the current epoch. 404 for an unknown model, 409 when nothing runs.
    """
    if get_model(r, tenant, model_id) is None:
        raise NotFound(f"There is no model '{model_id}'.", code="model_not_found",
                       details={"model_id": model_id})
    with redis_guard("cancelling a run"):
        active = cast(str | None, r.get(active_key(tenant, model_id)))
    record = get_run(r, tenant, model_id, int(active)) if active else None
    if record is None or record["status"] in FINAL_STATES:
        raise Conflict(
            f"Model '{model_id}' has no run queued or running to cancel.",
            code="not_training",
            details=dict(get_status(r, tenant, model_id)),
        )
    ref = RunRef(tenant, model_id, int(record["version"]))
    ended = finish_run(r, celery, ref, phase="cancelled",
                       message="Cancelled before training started.", only_if_queued=True)
    if ended is not None:
        return ended, True

    def flag(rec: dict[str, Any]) -> dict[str, str] | None:
        if rec["status"] in FINAL_STATES:
            return None
        return {"cancel_requested": "1",
                "message": "Cancel requested; the run stops after the current epoch."}

    transact(r, ref.key, flag)
    return get_status(r, tenant, model_id, ref.version), False
