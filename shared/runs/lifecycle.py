"""State changes of training runs: create, start, progress, cancel, requeue, finish, complete.

Key layout and reads are in :mod:`shared.runs.records`. Every change here is one
WATCH/MULTI transaction on the run record, guarded by the state it expects:

- a worker's writes carry its ``owner`` token and are dropped once another
  attempt (after a requeue) or a finalisation took over;
- :func:`finish_run` and :func:`complete_run` are the only ways a run ends;
  only the caller whose transaction ends it schedules the callback, so it is
  scheduled exactly once per run;
- :func:`complete_run` makes the version serving in the same transaction that
  marks the run completed (after the artifact is durable on storage).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import redis
from celery import Celery

from shared.config import Settings
from shared.contracts import QUEUE_TRAIN, TASK_TRAIN, Phase, RunState, RunStatus
from shared.errors import Conflict, NotFound
from shared.metrics import record_run_finished
from shared.registry import redis_guard, tenant_key
from shared.runs.records import (
    ACTIVE_RUNS,
    FINAL_STATES,
    active_key,
    check_not_active,
    get_model,
    get_run,
    get_status,
    lock_key,
    model_key,
    models_key,
    now_iso,
    run_key,
    run_member,
    status_of,
    transact,
)

#: Message of a run waiting for a worker.
QUEUED_MESSAGE = "Queued; waiting for a training worker."


def _seq_key(tenant: str, model_id: str) -> str:
    # Survives DELETE /models so a re-created model never reuses a version number
    # (serving processes cache artifacts by version).
    return tenant_key(tenant, "model", model_id, "seq")


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def create_run(
    r: redis.Redis,
    tenant: str,
    model_id: str,
    params: Mapping[str, Any],
    callback_url: str | None,
    now: datetime | None = None,
) -> RunStatus:
    """Register a queued run with the next version; 409 when the model already trains."""
    moment = now or datetime.now(UTC)
    stamp = now_iso(moment)
    akey, seq = active_key(tenant, model_id), _seq_key(tenant, model_id)
    with redis_guard("creating a training run"), r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(akey, seq, model_key(tenant, model_id))  # type: ignore[no-untyped-call]
                check_not_active(r, tenant, model_id)
                version = int(cast(str | None, pipe.get(seq)) or 0) + 1
                exists = bool(pipe.exists(model_key(tenant, model_id)))
                record = {
                    "model_id": model_id,
                    "version": str(version),
                    "status": "running",
                    "phase": "queued",
                    "message": QUEUED_MESSAGE,
                    "progress": "0",
                    "start_timestamp": "",
                    "end_timestamp": "",
                    "created_at": stamp,
                    "data_batch_ids": "[]",
                    "counts": "",
                    "metrics": "",
                    "params": _dump(dict(params)),
                    "callback_url": callback_url or "",
                    "attempts": "0",
                    "heartbeat": "0",
                    "owner": "",
                    "cancel_requested": "",
                    "task_id": "",
                }
                model_fields = {"model_id": model_id, "last_version": str(version),
                                "updated_at": stamp}
                if not exists:
                    model_fields.update(created_at=stamp, serving_version="", versions="[]")
                pipe.multi()
                pipe.set(seq, version)
                pipe.hset(run_key(tenant, model_id, version), mapping=record)
                pipe.hset(model_key(tenant, model_id), mapping=model_fields)
                pipe.zadd(models_key(tenant), {model_id: moment.timestamp()}, nx=True)
                pipe.set(akey, version)
                pipe.sadd(ACTIVE_RUNS, run_member(tenant, model_id, version))
                pipe.execute()
                return status_of({**record, "version": version, "progress": 0,
                                  "data_batch_ids": [], "counts": None, "metrics": None})
            except redis.WatchError:
                continue


def set_task_id(r: redis.Redis, tenant: str, model_id: str, version: int, task_id: str) -> None:
    """Remember the Celery task id of the run's current attempt."""
    with redis_guard("recording a task id"):
        r.hset(run_key(tenant, model_id, version), "task_id", task_id)


def start_attempt(
    r: redis.Redis, tenant: str, model_id: str, version: int, owner: str, stale_after: float
) -> dict[str, Any] | None:
    """Claim the run for a worker attempt; None when it ended or another attempt is alive."""
    now = time.time()

    def update(record: dict[str, Any]) -> dict[str, str] | None:
        if record["status"] in FINAL_STATES:
            return None
        alive = record["phase"] != "queued" and now - record["heartbeat"] < stale_after
        if alive:
            return None
        changes = {"phase": "loading_data", "message": "Loading and assembling the data.",
                   "attempts": str(record["attempts"] + 1), "heartbeat": str(now),
                   "owner": owner}
        if not record.get("start_timestamp"):
            changes["start_timestamp"] = now_iso()
        return changes

    return transact(r, run_key(tenant, model_id, version), update)


def update_run(
    r: redis.Redis,
    tenant: str,
    model_id: str,
    version: int,
    owner: str,
    *,
    phase: Phase | None = None,
    progress: int | None = None,
    message: str | None = None,
    fields: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Mirror a worker's progress; progress never decreases and stays below 100.

    Returns the record, or None when this attempt no longer owns the run.
    """
    now = time.time()

    def update(record: dict[str, Any]) -> dict[str, str] | None:
        if record["status"] in FINAL_STATES or record.get("owner") != owner:
            return None
        changes = {"heartbeat": str(now)}
        if phase is not None:
            changes["phase"] = phase
        if progress is not None:
            changes["progress"] = str(max(record["progress"], min(int(progress), 99)))
        if message is not None:
            changes["message"] = message
        for name, value in (fields or {}).items():
            changes[name] = value if isinstance(value, str) else _dump(value)
        return changes

    return transact(r, run_key(tenant, model_id, version), update)


def cancel_requested(r: redis.Redis, tenant: str, model_id: str, version: int) -> bool:
    """True once a cancel was asked for (or the run already ended elsewhere)."""
    with redis_guard("checking for a cancel request"):
        flag, status = cast(
            list[str | None],
            r.hmget(run_key(tenant, model_id, version), ["cancel_requested", "status"]),
        )
    return bool(flag) or status in FINAL_STATES


def _release_active(r: redis.Redis, tenant: str, model_id: str, version: int) -> None:
    key = active_key(tenant, model_id)
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                if pipe.get(key) != str(version):
                    pipe.unwatch()
                else:
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
                break
            except redis.WatchError:
                continue
    r.srem(ACTIVE_RUNS, run_member(tenant, model_id, version))


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


def _after_end(r: redis.Redis, celery: Celery | None, tenant: str, model_id: str,
               version: int, record: dict[str, Any]) -> RunStatus:
    """What follows every end of a run, once: free the model and schedule the callback."""
    from shared.webhooks.deliveries import schedule_for_run

    with redis_guard("ending a training run"):
        _release_active(r, tenant, model_id, version)
    status = get_status(r, tenant, model_id, version)
    record_run_finished(r, _outcome(status), _duration_s(status))
    url = record.get("callback_url")
    if url and celery is not None:
        schedule_for_run(r, celery, tenant, model_id, version, url, status)
    return status


def finish_run(
    r: redis.Redis,
    celery: Celery | None,
    tenant: str,
    model_id: str,
    version: int,
    *,
    phase: Phase,
    message: str,
    owner: str | None = None,
    only_if_queued: bool = False,
    fields: Mapping[str, Any] | None = None,
) -> RunStatus | None:
    """End a run as ``error`` (phase failed or cancelled); None when it had already ended.

    With ``owner`` the end only applies while that attempt owns the run; with
    ``only_if_queued`` only while no worker has started it.
    """
    state: RunState = "error"

    def update(record: dict[str, Any]) -> dict[str, str] | None:
        if record["status"] in FINAL_STATES:
            return None
        if owner is not None and record.get("owner") != owner:
            return None
        if only_if_queued and record["phase"] != "queued":
            return None
        changes = {"status": state, "phase": phase, "message": message,
                   "end_timestamp": now_iso(), "owner": ""}
        for name, value in (fields or {}).items():
            changes[name] = value if isinstance(value, str) else _dump(value)
        return changes

    record = transact(r, run_key(tenant, model_id, version), update)
    if record is None:
        return None
    return _after_end(r, celery, tenant, model_id, version, record)


def complete_run(
    r: redis.Redis,
    celery: Celery | None,
    tenant: str,
    model_id: str,
    version: int,
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
    rkey, mkey = run_key(tenant, model_id, version), model_key(tenant, model_id)
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
                versions = sorted({*kept, version})
                dropped = versions[:-keep_versions]
                versions = versions[-keep_versions:]
                changes = {"status": "completed", "phase": "done", "progress": "100",
                           "message": message, "end_timestamp": now_iso(), "owner": ""}
                for name, value in (fields or {}).items():
                    changes[name] = value if isinstance(value, str) else _dump(value)
                pipe.multi()
                pipe.hset(rkey, mapping=changes)
                pipe.hset(mkey, mapping={**model_fields, "serving_version": str(version),
                                         "versions": _dump(versions), "updated_at": now_iso()})
                pipe.execute()
                break
            except redis.WatchError:
                continue
    record = get_run(r, tenant, model_id, version) or {}
    return _after_end(r, celery, tenant, model_id, version, record), dropped


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
    version = int(record["version"])
    ended = finish_run(r, celery, tenant, model_id, version, phase="cancelled",
                       message="Cancelled before training started.", only_if_queued=True)
    if ended is not None:
        return ended, True

    def flag(rec: dict[str, Any]) -> dict[str, str] | None:
        if rec["status"] in FINAL_STATES:
            return None
        return {"cancel_requested": "1",
                "message": "Cancel requested; the run stops after the current epoch."}

    transact(r, run_key(tenant, model_id, version), flag)
    return get_status(r, tenant, model_id, version), False


def requeue_run(
    r: redis.Redis, tenant: str, model_id: str, version: int, message: str
) -> dict[str, Any] | None:
    """Put a run whose worker vanished back to ``queued`` (progress kept); frees the lock."""

    def update(record: dict[str, Any]) -> dict[str, str] | None:
        if record["status"] in FINAL_STATES:
            return None
        return {"phase": "queued", "message": message, "owner": "",
                "heartbeat": str(time.time())}

    record = transact(r, run_key(tenant, model_id, version), update)
    if record is not None:
        with redis_guard("freeing a model lock"):
            r.delete(lock_key(tenant, model_id))
    return record


def active_runs(r: redis.Redis) -> list[str]:
    """Members of every run not yet ended, across tenants (for the reconciler)."""
    with redis_guard("listing active runs"):
        return sorted(cast(set[str], r.smembers(ACTIVE_RUNS)))


def forget_active(r: redis.Redis, member: str) -> None:
    """Drop a member from the active set (its run ended or vanished)."""
    with redis_guard("updating active runs"):
        r.srem(ACTIVE_RUNS, member)


def delete_model(r: redis.Redis, tenant: str, model_id: str) -> dict[str, Any]:
    """Remove a model and its runs from the registry; 409 while it trains.

    Returns the deleted model record; the caller removes its storage.
    """
    model = get_model(r, tenant, model_id)
    if model is None:
        raise NotFound(f"There is no model '{model_id}'.", code="model_not_found",
                       details={"model_id": model_id})
    check_not_active(r, tenant, model_id)
    with redis_guard("deleting a model"):
        pipe = r.pipeline(transaction=True)
        for version in range(1, int(model["last_version"]) + 1):
            pipe.delete(run_key(tenant, model_id, version))
        pipe.delete(model_key(tenant, model_id), active_key(tenant, model_id))
        pipe.zrem(models_key(tenant), model_id)
        pipe.execute()
    return model


# -- enqueueing --------------------------------------------------------------------------


def enqueue_run(
    r: redis.Redis, celery: Celery, settings: Settings, tenant: str, model_id: str,
    version: int, attempt: int,
) -> str:
    """Send the training task for a run (by name, with the time limits) and record its id."""
    task_id = f"train-{tenant}-{model_id}-v{version}-a{attempt}-{uuid.uuid4().hex[:8]}"
    celery.send_task(
        TASK_TRAIN,
        kwargs={"tenant": tenant, "model_id": model_id, "version": version},
        queue=QUEUE_TRAIN,
        task_id=task_id,
        soft_time_limit=settings.train_soft_time_limit,
        time_limit=settings.train_hard_time_limit,
    )
    set_task_id(r, tenant, model_id, version, task_id)
    return task_id
