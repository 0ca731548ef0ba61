"""The start and middle of a training run: create, enqueue, start, progress, requeue.

How a run ends (finish, complete, cancel) is in :mod:`shared.runs.ending`; key
layout and reads are in :mod:`shared.runs.records`; :class:`shared.runs.service.Runs`
binds both to the service's Redis, queue and settings. Every change here is one
WATCH/MULTI transaction on the run record, guarded by the state it expects: a
worker's writes carry its ``owner`` token and are dropped once another attempt
(after a requeue) or a finalisation took over.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import redis
from celery import Celery

from shared import quotas
from shared.config import Settings
from shared.contracts import QUEUE_TRAIN, TASK_TRAIN, Phase, RunStatus
from shared.errors import NotFound
from shared.registry import redis_guard, tenant_key
from shared.runs.records import (
    ACTIVE_RUNS,
    FINAL_STATES,
    active_key,
    check_not_active,
    dump,
    encode_fields,
    get_model,
    lock_key,
    model_key,
    models_key,
    now_iso,
    run_key,
    status_of,
    transact,
)
from shared.runs.ref import RunRef

#: Message of a run waiting for a worker.
QUEUED_MESSAGE = "Queued; waiting for a training worker."


def _seq_key(tenant: str, model_id: str) -> str:
    # Survives DELETE /models so a re-created model never reuses a version number
    # (serving processes cache artifacts by version).
    return tenant_key(tenant, "model", model_id, "seq")


def _new_record(model_id: str, version: int, params: Mapping[str, Any],
                callback_url: str | None, stamp: str) -> dict[str, str]:
    """The record of a run just queued, as stored."""
    return {
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
        "params": dump(dict(params)),
        "callback_url": callback_url or "",
        "attempts": "0",
        "heartbeat": "0",
        "owner": "",
        "cancel_requested": "",
        "task_id": "",
        "training": _training_field(params),
    }


def _training_field(params: Mapping[str, Any]) -> str:
    """The status's ``training`` as stored: a warm start names its parent from the start."""
    warm = params.get("warm_start")
    if isinstance(warm, Mapping) and warm.get("parent_version"):
        return dump({"parent_version": int(warm["parent_version"])})
    return ""


def create_run(
    r: redis.Redis,
    tenant: str,
    model_id: str,
    params: Mapping[str, Any],
    callback_url: str | None,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> RunStatus:
    """Register a queued run with the next version; 409 when the model already trains.

    With ``settings``, the tenant's quotas are checked inside the same transaction
    (429 ``quota_exceeded``, nothing stored; see :mod:`shared.quotas`).
    """
    moment = now or datetime.now(UTC)
    stamp = now_iso(moment)
    if settings is not None:
        quotas.check_run_params_size(dump(dict(params)))
    akey, seq = active_key(tenant, model_id), _seq_key(tenant, model_id)
    mkey = model_key(tenant, model_id)
    with redis_guard("creating a training run"), r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(akey, seq, mkey,  # type: ignore[no-untyped-call]
                           *quotas.run_watch_keys(tenant))
                check_not_active(r, tenant, model_id)
                version = int(cast(str | None, pipe.get(seq)) or 0) + 1
                exists = bool(pipe.exists(mkey))
                if settings is not None:
                    quotas.check_new_run(pipe, settings, tenant, new_model=not exists)
                ref = RunRef(tenant, model_id, version)
                record = _new_record(model_id, version, params, callback_url, stamp)
                model_fields = {"model_id": model_id, "last_version": str(version),
                                "updated_at": stamp}
                if not exists:
                    model_fields.update(created_at=stamp, serving_version="", versions="[]")
                pipe.multi()
                pipe.set(seq, version)
                pipe.hset(ref.key, mapping=record)
                pipe.hset(mkey, mapping=model_fields)
                pipe.zadd(models_key(tenant), {model_id: moment.timestamp()}, nx=True)
                pipe.set(akey, version)
                pipe.sadd(ACTIVE_RUNS, ref.member)
                pipe.sadd(quotas.active_runs_key(tenant), f"{model_id}/{version}")
                pipe.execute()
                return status_of({**record, "version": version, "progress": 0,
                                  "data_batch_ids": [], "counts": None, "metrics": None})
            except redis.WatchError:
                continue


def set_task_id(r: redis.Redis, ref: RunRef, task_id: str) -> None:
    """Remember the Celery task id of the run's current attempt."""
    with redis_guard("recording a task id"):
        r.hset(ref.key, "task_id", task_id)


def enqueue_run(r: redis.Redis, celery: Celery, settings: Settings, ref: RunRef,
                attempt: int) -> str:
    """Send the training task for a run (by name, with the time limits) and record its id."""
    task_id = (f"train-{ref.tenant}-{ref.model_id}-v{ref.version}-a{attempt}-"
               f"{uuid.uuid4().hex[:8]}")
    celery.send_task(
        TASK_TRAIN,
        kwargs={"tenant": ref.tenant, "model_id": ref.model_id, "version": ref.version},
        queue=QUEUE_TRAIN,
        task_id=task_id,
        soft_time_limit=settings.train_soft_time_limit,
        time_limit=settings.train_hard_time_limit,
    )
    set_task_id(r, ref, task_id)
    return task_id


def start_attempt(
    r: redis.Redis, ref: RunRef, owner: str, stale_after: float
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

    return transact(r, ref.key, update)


def update_run(
    r: redis.Redis,
    ref: RunRef,
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
        changes.update(encode_fields(fields))
        return changes

    return transact(r, ref.key, update)


def cancel_requested(r: redis.Redis, ref: RunRef) -> bool:
    """True once a cancel was asked for (or the run already ended elsewhere)."""
    with redis_guard("checking for a cancel request"):
        flag, status = cast(list[str | None], r.hmget(ref.key, ["cancel_requested", "status"]))
    return bool(flag) or status in FINAL_STATES


def requeue_run(r: redis.Redis, ref: RunRef, message: str) -> dict[str, Any] | None:
    """Put a run whose worker vanished back to ``queued`` (progress kept); frees the lock."""

    def update(record: dict[str, Any]) -> dict[str, str] | None:
        if record["status"] in FINAL_STATES:
            return None
        return {"phase": "queued", "message": message, "owner": "",
                "heartbeat": str(time.time())}

    record = transact(r, ref.key, update)
    if record is not None:
        with redis_guard("freeing a model lock"):
            r.delete(lock_key(ref.tenant, ref.model_id))
    return record


def active_runs(r: redis.Redis) -> list[str]:
    """Members of every run not yet ended, across tenants (for the reconciler)."""
    with redis_guard("listing active runs"):
        return sorted(cast(set[str], r.smembers(ACTIVE_RUNS)))


def forget_active(r: redis.Redis, member: str) -> None:
    """Drop a member from the active set (its run ended or vanished)."""
    tenant, _, rest = member.partition("/")
    with redis_guard("updating active runs"):
        r.srem(ACTIVE_RUNS, member)
        r.srem(quotas.active_runs_key(tenant), rest)


def delete_model(r: redis.Redis, tenant: str, model_id: str) -> dict[str, Any]:
    """Remove a model and its runs from the registry; 409 while it trains.

    The check for an active run and the removal are one WATCH/MULTI transaction on the
    keys :func:`create_run` writes, so a run created meanwhile makes it retry (and
    answer 409) instead of being deleted under its worker. Returns the deleted model
    record; the caller removes its storage.
    """
    akey, mkey = active_key(tenant, model_id), model_key(tenant, model_id)
    with redis_guard("deleting a model"), r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(akey, mkey, _seq_key(tenant, model_id))  # type: ignore[no-untyped-call]
                model = get_model(r, tenant, model_id)
                if model is None:
                    raise NotFound(f"There is no model '{model_id}'.", code="model_not_found",
                                   details={"model_id": model_id})
                check_not_active(r, tenant, model_id)
                pipe.multi()
                for version in range(1, int(model["last_version"]) + 1):
                    pipe.delete(run_key(tenant, model_id, version))
                pipe.delete(mkey, akey)
                pipe.zrem(models_key(tenant), model_id)
                pipe.execute()
                return model
            except redis.WatchError:
                continue
