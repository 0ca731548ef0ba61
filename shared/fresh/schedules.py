"""Model schedules: the definition in the registry, the timing in celery-redbeat.

Each schedule is two things in Redis:

- ``t:<tenant>:schedule:<model_id>``: a hash with the definition (``definition``:
  the contract's fields plus the run's resolved ``params`` and ``callback_url``)
  and the last tick (``last_tick``), plus a capped list of recent ticks;
- a redbeat entry named ``schedule:<tenant>/<model_id>`` that sends
  ``TASK_SCHEDULE_TICK(tenant, model_id)`` on the interval or the cron
  expression. Beat (``--scheduler redbeat.RedBeatScheduler``) reads due entries
  from Redis on every loop, holds a lock so that one beat fires each tick
  however many run, and keeps no state on disk, so entries survive restarts of
  every process (and of Redis, with its append-only file).

Cron expressions are five fields in UTC, validated and evaluated with croniter;
redbeat fires them through Celery's ``crontab`` built from the same fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis
from celery import Celery
from celery.schedules import ParseException, crontab, schedule
from croniter import croniter

from shared.contracts import TASK_SCHEDULE_TICK
from shared.errors import NotFound, ValidationFailed
from shared.registry import redis_guard, tenant_key
from shared.runs.records import now_iso

#: Ticks kept in each schedule's history (newest first).
TICK_HISTORY = 20
OUTCOMES = ("started", "skipped_no_new_data", "skipped_already_training", "refused")


def schedule_key(tenant: str, model_id: str) -> str:
    """Hash of one model's schedule."""
    return tenant_key(tenant, "schedule", model_id)


def ticks_key(tenant: str, model_id: str) -> str:
    """List of the schedule's recent ticks, newest first."""
    return tenant_key(tenant, "schedule", model_id, "ticks")


def entry_name(tenant: str, model_id: str) -> str:
    """The redbeat entry's name (tenants and model ids never hold '/')."""
    return f"schedule:{tenant}/{model_id}"


def bind_redis(celery: Celery, client: redis.Redis) -> None:
    """Make redbeat use ``client`` (the service's own connection) for this app."""
    celery.redbeat_redis = client


def parse_cron(expression: str) -> crontab:
    """A Celery crontab for a 5-field UTC cron expression; 422 when croniter refuses it."""
    fields = expression.split()
    if len(fields) != 5 or not croniter.is_valid(expression):
        raise ValidationFailed(
            f"'{expression[:100]}' is not a 5-field cron expression (minute hour "
            "day-of-month month day-of-week, UTC), e.g. '0 3 * * *'.",
            code="invalid_schedule", details={"fields": {"cron": "invalid"}})
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        return crontab(minute=minute, hour=hour, day_of_month=day_of_month,
                       month_of_year=month_of_year, day_of_week=day_of_week)
    except (ValueError, ParseException) as exc:
        raise ValidationFailed(
            f"The cron expression '{expression[:100]}' cannot be scheduled: {exc}.",
            code="invalid_schedule", details={"fields": {"cron": str(exc)}}) from exc


def _timing(definition: Mapping[str, Any]) -> schedule | crontab:
    if definition.get("cron"):
        return parse_cron(str(definition["cron"]))
    return schedule(run_every=timedelta(minutes=float(definition["interval_minutes"])))


def next_run_at(definition: Mapping[str, Any], last: datetime | None,
                now: datetime | None = None) -> str:
    """When the next tick is due (ISO-8601 UTC)."""
    moment = now or datetime.now(UTC)
    if definition.get("cron"):
        due = croniter(str(definition["cron"]), moment).get_next(datetime)
    else:
        step = timedelta(minutes=float(definition["interval_minutes"]))
        due = (last or moment) + step
        while due < moment:
            due += step
    return now_iso(due)


def _entry(celery: Celery, tenant: str, model_id: str,
           definition: Mapping[str, Any] | None = None) -> Any:
    from redbeat import RedBeatSchedulerEntry

    timing = _timing(definition) if definition is not None else None
    # a tick not picked up before the next one is due is dropped, not piled up
    expires = 300.0
    if definition is not None and not definition.get("cron"):
        expires = min(expires, float(definition["interval_minutes"]) * 60)
    return RedBeatSchedulerEntry(entry_name(tenant, model_id), TASK_SCHEDULE_TICK, timing,
                                 args=[tenant, model_id],
                                 options={"expires": expires}, app=celery)


def put_schedule(r: redis.Redis, celery: Celery, tenant: str, model_id: str,
                 definition: Mapping[str, Any]) -> dict[str, Any]:
    """Create or replace the model's schedule; returns its view."""
    stored = {**definition, "updated_at": now_iso()}
    with redis_guard("saving a schedule"):
        r.hset(schedule_key(tenant, model_id), mapping={"definition": json.dumps(stored)})
        _entry(celery, tenant, model_id, definition).save()
    view = get_schedule(r, tenant, model_id)
    assert view is not None
    return view


def load_definition(r: redis.Redis, tenant: str, model_id: str) -> dict[str, Any] | None:
    """The stored definition (with ``params`` and ``callback_url``), or None."""
    with redis_guard("reading a schedule"):
        raw = cast(str | None, r.hget(schedule_key(tenant, model_id), "definition"))
    return json.loads(raw) if raw else None


def get_schedule(r: redis.Redis, tenant: str, model_id: str) -> dict[str, Any] | None:
    """The contract's view of the model's schedule, or None."""
    definition = load_definition(r, tenant, model_id)
    if definition is None:
        return None
    with redis_guard("reading a schedule"):
        raw_tick = cast(str | None, r.hget(schedule_key(tenant, model_id), "last_tick"))
        recent = cast(list[str], r.lrange(ticks_key(tenant, model_id), 0, TICK_HISTORY - 1))
    last_tick = json.loads(raw_tick) if raw_tick else None
    last_at = (datetime.fromisoformat(last_tick["at"].replace("Z", "+00:00"))
               if last_tick else None)
    timing = ({"cron": definition["cron"]} if definition.get("cron")
              else {"interval_minutes": definition["interval_minutes"]})
    work = ({"tune": definition["tune"]} if definition.get("tune") is not None
            else {"train": definition.get("train") or {}})
    return {
        "model_id": model_id, **timing, **work,
        "warm_start": bool(definition.get("warm_start")),
        "only_with_new_data": bool(definition.get("only_with_new_data", True)),
        "next_run_at": next_run_at(definition, last_at),
        "last_tick": last_tick,
        "recent_ticks": [json.loads(t) for t in recent],
        "updated_at": definition.get("updated_at"),
    }


def delete_schedule(r: redis.Redis, celery: Celery, tenant: str, model_id: str,
                    missing_ok: bool = False) -> bool:
    """Remove the schedule and its beat entry; 404 when none (unless ``missing_ok``)."""
    with redis_guard("deleting a schedule"):
        existed = bool(r.delete(schedule_key(tenant, model_id), ticks_key(tenant, model_id)))
        drop_entry(celery, tenant, model_id)
    if not existed and not missing_ok:
        raise NotFound(f"Model '{model_id}' has no schedule.", code="schedule_not_found",
                       details={"model_id": model_id})
    return existed


def drop_entry(celery: Celery, tenant: str, model_id: str) -> None:
    """Remove the beat entry only (a tick whose schedule is gone calls this too)."""
    from redbeat import RedBeatSchedulerEntry

    RedBeatSchedulerEntry(entry_name(tenant, model_id), app=celery).delete()


def record_tick(r: redis.Redis, tenant: str, model_id: str, outcome: str,
                version: int | None, message: str, now: datetime | None = None
                ) -> dict[str, Any]:
    """Store one tick's outcome as the schedule's ``last_tick`` and in its history."""
    tick = {"at": now_iso(now), "outcome": outcome, "version": version, "message": message}
    encoded = json.dumps(tick)
    with redis_guard("recording a schedule tick"):
        if not r.exists(schedule_key(tenant, model_id)):
            return tick  # deleted meanwhile: leave nothing behind
        pipe = r.pipeline(transaction=True)
        pipe.hset(schedule_key(tenant, model_id), "last_tick", encoded)
        pipe.lpush(ticks_key(tenant, model_id), encoded)
        pipe.ltrim(ticks_key(tenant, model_id), 0, TICK_HISTORY - 1)
        pipe.execute()
    return tick
