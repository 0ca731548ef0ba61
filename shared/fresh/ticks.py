"""One tick of a model's schedule: decide, then submit an ordinary run through ``Runs``.

The decision, in order: a model already training skips the tick
(``skipped_already_training``); with ``only_with_new_data`` a tick that finds no
batch matching the run's data tags stored since the serving version's run
started skips (``skipped_no_new_data``); otherwise the run is submitted, a warm
start from the serving version when asked (a model with no serving version
yet trains from scratch). Anything the service refuses (a warm start whose
parent cannot be continued, a quota, an unreachable broker) is ``refused``
with the reason. Every outcome is recorded on the schedule.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import Celery

from shared.data.batches import batches_with_any_tag
from shared.errors import Conflict, ServiceError
from shared.fresh.schedules import drop_entry, load_definition, record_tick
from shared.fresh.warm import warm_params
from shared.runs.records import active_key, get_run, serving_version
from shared.runs.service import Runs
from shared.runs.tuning import submit_search
from shared.storage import Storage

log = logging.getLogger(__name__)


def _parse(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC)


def has_new_data(runs: Runs, tenant: str, model_id: str, serving: int,
                 params: dict[str, Any]) -> bool:
    """Whether a batch matching the run's tags was stored since the serving run started."""
    record = get_run(runs.redis, tenant, model_id, serving) or {}
    since = _parse(record.get("start_timestamp")) or _parse(record.get("created_at"))
    used = set(record.get("data_batch_ids") or [])
    tags = params.get("data_tags")
    for meta in batches_with_any_tag(runs.redis, tenant, tags):
        stored = _parse(meta.timestamp)
        if meta.batch_id not in used and (since is None or stored is None or stored >= since):
            return True
    return False


def _training(runs: Runs, tenant: str, model_id: str) -> bool:
    active = runs.redis.get(active_key(tenant, model_id))
    if not active:
        return False
    record = get_run(runs.redis, tenant, model_id, int(str(active)))
    return record is not None and record["status"] == "running"


def run_tick(runs: Runs, celery: Celery, storage: Storage, tenant: str,
             model_id: str) -> dict[str, Any]:
    """Decide and act on one tick; returns the recorded tick (or ``gone``)."""
    definition = load_definition(runs.redis, tenant, model_id)
    if definition is None:
        drop_entry(celery, tenant, model_id)  # deleted between beat's read and this tick
        return {"outcome": "gone"}
    params: dict[str, Any] = dict(definition["params"])
    version: int | None = None
    if _training(runs, tenant, model_id):
        outcome, message = "skipped_already_training", "The model is training; tick skipped."
    else:
        outcome, message, version = _submit(runs, storage, tenant, model_id, definition, params)
    tick = record_tick(runs.redis, tenant, model_id, outcome, version, message)
    log.info("schedule tick %s/%s: %s %s", tenant, model_id, outcome, message)
    return tick


def _submit(runs: Runs, storage: Storage, tenant: str, model_id: str,
            definition: dict[str, Any], params: dict[str, Any]
            ) -> tuple[str, str, int | None]:
    serving = serving_version(runs.redis, tenant, model_id)
    if (definition.get("only_with_new_data", True) and serving is not None
            and not has_new_data(runs, tenant, model_id, serving, params)):
        return ("skipped_no_new_data",
                f"No new data since version {serving} started; tick skipped.", None)
    try:
        if definition.get("warm_start") and serving is not None:
            requested = (definition.get("train") or {}).get("hyperparameters") or {}
            params = warm_params(runs.redis, storage, tenant, model_id, requested, params)
        if definition.get("tune") is not None:  # a scheduled search (docs/tuning.md)
            ref = submit_search(runs, tenant, model_id, params, definition.get("callback_url"))
        else:
            ref = runs.submit(tenant, model_id, params, definition.get("callback_url"))
    except Conflict as exc:
        if exc.code == "model_training":
            return "skipped_already_training", "The model is training; tick skipped.", None
        return "refused", exc.message, None
    except ServiceError as exc:
        return "refused", exc.message, None
    kind = ("search" if "search" in params else
            "warm start" if "warm_start" in params else "run")
    return "started", f"Started {kind} version {ref.version}.", ref.version
