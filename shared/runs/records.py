"""The registry of models and training runs in Redis.

Keys (all under the tenant, see :mod:`shared.registry`)::

    models                 sorted set of model ids by creation time
    model:<id>             hash: the model record (serving_version, versions, last_version, ...)
    model:<id>:active      string: the version of the run queued or running, if any
    model:<id>:lock        string: token of the worker training this model (expires)
    run:<id>:<version>     hash: the run record, the source of every status answer

plus the global set ``recsys:runs:active`` of ``tenant/model_id/version`` the
reconciler scans. Every state change is a WATCH/MULTI transaction, so a run
is finalised exactly once (whoever wins calls the callback scheduling), and a
version becomes serving in the same atomic write that completes its run.
Status is always read from the run record, never from Celery's result state.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import redis

from shared.contracts import Counts, Metrics, Phase, RunState, RunStatus, TrainingChoice
from shared.errors import Conflict, NotFound
from shared.registry import global_key, redis_guard, tenant_key

FINAL_STATES: frozenset[str] = frozenset({"completed", "error"})
_JSON_FIELDS = ("data_batch_ids", "counts", "metrics", "params", "tuning", "training")


def now_iso(now: datetime | None = None) -> str:
    """An ISO-8601 UTC timestamp with a Z suffix."""
    moment = now or datetime.now(UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def models_key(tenant: str) -> str:
    """Sorted set of a tenant's model ids."""
    return tenant_key(tenant, "models")


def model_key(tenant: str, model_id: str) -> str:
    """Hash of one model record."""
    return tenant_key(tenant, "model", model_id)


def active_key(tenant: str, model_id: str) -> str:
    """The version of the model's queued or running run."""
    return tenant_key(tenant, "model", model_id, "active")


def lock_key(tenant: str, model_id: str) -> str:
    """The per-model training lock."""
    return tenant_key(tenant, "model", model_id, "lock")


def run_key(tenant: str, model_id: str, version: int) -> str:
    """Hash of one run record."""
    return tenant_key(tenant, "run", model_id, str(version))


ACTIVE_RUNS = global_key("runs", "active")


def run_member(tenant: str, model_id: str, version: int) -> str:
    """The member naming a run in :data:`ACTIVE_RUNS` (tenants and ids never hold '/')."""
    return f"{tenant}/{model_id}/{version}"


def dump(value: Any) -> str:
    """A field value as compact JSON (how the record stores lists and dicts)."""
    return json.dumps(value, separators=(",", ":"))


def encode_fields(fields: Mapping[str, Any] | None) -> dict[str, str]:
    """Extra record fields as stored: strings as they are, anything else as JSON."""
    return {name: value if isinstance(value, str) else dump(value)
            for name, value in (fields or {}).items()}


def parse_member(member: str) -> tuple[str, str, int]:
    """Inverse of :func:`run_member`."""
    tenant, model_id, version = member.split("/")
    return tenant, model_id, int(version)


# -- reading ---------------------------------------------------------------------------------


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    record: dict[str, Any] = dict(raw)
    for name in _JSON_FIELDS:
        if name in record:
            record[name] = json.loads(record[name]) if record[name] else None
    for name in ("version", "progress", "attempts"):
        if name in record:
            record[name] = int(record[name] or 0)
    if "heartbeat" in record:
        record["heartbeat"] = float(record["heartbeat"] or 0.0)
    return record


def serving_version(r: redis.Redis, tenant: str, model_id: str) -> int | None:
    """The version recommendations use, None while the first training runs (one HGET)."""
    with redis_guard("reading a model's serving version"):
        raw = cast(str | None, r.hget(model_key(tenant, model_id), "serving_version"))
    return int(raw) if raw else None


def _model_view(raw: dict[str, str]) -> dict[str, Any]:
    serving = raw.get("serving_version") or ""
    return {
        "model_id": raw["model_id"],
        "serving_version": int(serving) if serving else None,
        "versions": json.loads(raw.get("versions") or "[]"),
        "pinned": bool(raw.get("pinned")),
        "last_version": int(raw.get("last_version") or 0),
        "source_type": raw.get("source_type") or None,
        "target_type": raw.get("target_type") or None,
        "created_at": raw.get("created_at"),
        "updated_at": raw.get("updated_at"),
    }


def get_model(r: redis.Redis, tenant: str, model_id: str) -> dict[str, Any] | None:
    """The model record, or None for an unknown model.

    ``versions`` lists the completed versions kept on storage, oldest first;
    ``last_version`` is the newest run's version (whatever its outcome).
    """
    with redis_guard("reading a model"):
        raw = cast(dict[str, str], r.hgetall(model_key(tenant, model_id)))
    return _model_view(raw) if raw else None


def list_models(r: redis.Redis, tenant: str) -> list[dict[str, Any]]:
    """Every model record of a tenant, oldest first."""
    with redis_guard("listing models"):
        ids = cast(list[str], r.zrange(models_key(tenant), 0, -1))
        pipe = r.pipeline(transaction=False)
        for model_id in ids:
            pipe.hgetall(model_key(tenant, model_id))
        raws = cast(list[dict[str, str]], pipe.execute())
    return [_model_view(raw) for raw in raws if raw]


def get_run(
    r: redis.Redis, tenant: str, model_id: str, version: int | None = None
) -> dict[str, Any] | None:
    """The decoded run record of the latest (or given) run, or None."""
    with redis_guard("reading a run"):
        if version is None:
            last = cast(str | None, r.hget(model_key(tenant, model_id), "last_version"))
            if not last:
                return None
            version = int(last)
        raw = cast(dict[str, str], r.hgetall(run_key(tenant, model_id, version)))
    return _decode(raw) if raw else None


def status_of(record: dict[str, Any]) -> RunStatus:
    """The contract's status object of a decoded run record (callback field left None)."""
    return {
        "model_id": record["model_id"],
        "version": int(record["version"]),
        "start_timestamp": record.get("start_timestamp") or None,
        "end_timestamp": record.get("end_timestamp") or None,
        "status": cast(RunState, record["status"]),
        "phase": cast(Phase, record["phase"]),
        "message": record.get("message", ""),
        "progress": int(record.get("progress", 0)),
        "data_batch_ids": list(record.get("data_batch_ids") or []),
        "counts": cast(Counts | None, record.get("counts")),
        "metrics": cast(Metrics | None, record.get("metrics")),
        "callback": None,
        "tuning": public_tuning(record.get("tuning")),
        "training": cast(TrainingChoice | None, record.get("training")),
    }


def public_tuning(state: Any) -> dict[str, Any] | None:
    """A search's state as the status shows it: keys starting with '_' are internal."""
    if not isinstance(state, dict):
        return None
    view = {k: v for k, v in state.items() if not k.startswith("_")}
    view["trials"] = [{k: v for k, v in trial.items() if not k.startswith("_")}
                      for trial in state.get("trials", [])]
    return view


def get_status(
    r: redis.Redis, tenant: str, model_id: str, version: int | None = None
) -> RunStatus:
    """The status object of the latest (or given) run; NotFound when there is none."""
    # Imported here: the deliveries module may import this one for the status it posts.
    from shared.webhooks.deliveries import callback_status

    record = get_run(r, tenant, model_id, version)
    if record is None:
        what = f"model '{model_id}'" if version is None else f"version {version} of '{model_id}'"
        raise NotFound(f"There is no training run for {what}.", code="model_not_found",
                       details={"model_id": model_id})
    status = status_of(record)
    if record.get("callback_url"):
        with redis_guard("reading a callback's state"):
            status["callback"] = callback_status(
                r, tenant, model_id, status["version"]
            ) or {  # the run has not ended yet: its one delivery is still to come
                "state": "pending",
                "attempts": 0,
                "last_response_code": None,
                "next_attempt_at": None,
            }
    return status


# -- transactions ----------------------------------------------------------------------------

Update = Callable[[dict[str, Any]], dict[str, str] | None]


def transact(r: redis.Redis, key: str, update: Update,
             extra: Callable[[redis.client.Pipeline, dict[str, Any]], None] | None = None,
             ) -> dict[str, Any] | None:
    """Apply ``update`` to the run record at ``key`` atomically (WATCH/MULTI, retried).

    ``update`` gets the decoded record and returns the fields to set, or None
    to leave it alone (then this returns None). ``extra`` queues more commands
    in the same transaction. Returns the record as written.
    """
    with redis_guard("updating a training run"), r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                raw = cast(dict[str, str], pipe.hgetall(key))
                if not raw:
                    pipe.unwatch()
                    return None
                record = _decode(raw)
                changes = update(record)
                if changes is None:
                    pipe.unwatch()
                    return None
                pipe.multi()
                pipe.hset(key, mapping=cast(dict[str | bytes, str], changes))
                merged = _decode({**raw, **changes})
                if extra is not None:
                    extra(pipe, merged)
                pipe.execute()
                return merged
            except redis.WatchError:
                continue


def check_not_active(r: redis.Redis, tenant: str, model_id: str) -> None:
    """Raise 409 (with the current status) when the model has a run queued or running."""
    with redis_guard("checking a model's runs"):
        active = cast(str | None, r.get(active_key(tenant, model_id)))
    if active:
        record = get_run(r, tenant, model_id, int(active))
        if record is not None and record["status"] not in FINAL_STATES:
            raise Conflict(
                f"Model '{model_id}' is already training (version {active}); wait for it "
                "to finish or cancel it with POST /train/<model_id>/cancel.",
                code="model_training",
                details=dict(get_status(r, tenant, model_id, int(active))),
            )
