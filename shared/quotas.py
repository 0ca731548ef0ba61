"""Per-tenant quotas: runs queued or running, models, batches and stored bytes.

Every check runs inside the Redis transaction that would store the new thing
(WATCH on the counted keys, then MULTI), so two concurrent requests of one
tenant cannot both pass the last free place: the second one's EXEC fails on
the changed key, it retries, counts again and gets 429 ``quota_exceeded``.
Callers WATCH :func:`run_watch_keys` / :func:`batch_watch_keys` and call the
matching ``check_*`` function between WATCH and MULTI.

Keys (under :func:`shared.registry.tenant_key`)::

    runs:active     SET    ``model_id/version`` of the tenant's queued or running runs
    batches:bytes   STRING stored batch bytes (INCRBY on record, DECRBY on delete)

Model and batch counts are the cardinalities of the registries' own sorted
sets (``models``, ``batches``).
"""

from __future__ import annotations

from typing import Any, cast

import redis

from shared.config import Settings
from shared.errors import QuotaExceeded, ValidationFailed
from shared.registry import tenant_key

#: Largest run parameters (the stored JSON of a /train request, defaults resolved), in bytes.
MAX_RUN_PARAMS_BYTES = 64 * 1024


def active_runs_key(tenant: str) -> str:
    """Set of the tenant's queued or running runs (``model_id/version``)."""
    return tenant_key(tenant, "runs", "active")


def batch_bytes_key(tenant: str) -> str:
    """The tenant's stored batch bytes."""
    return tenant_key(tenant, "batches", "bytes")


def _models_key(tenant: str) -> str:
    return tenant_key(tenant, "models")  # the same key as shared.runs.records.models_key


def _batches_key(tenant: str) -> str:
    return tenant_key(tenant, "batches")  # the same key as shared.data.batches._index


def exceeded(quota: str, limit: int, used: int, what: str) -> QuotaExceeded:
    """The 429 of one quota, with the contract's ``details: {quota, limit, used}``."""
    return QuotaExceeded(
        f"The tenant's {what} quota is used up ({used} of {limit}); nothing was stored or "
        "started. Free some, or ask the operator to raise it.",
        details={"quota": quota, "limit": limit, "used": used},
    )


def run_watch_keys(tenant: str) -> list[str]:
    """The keys :func:`check_new_run` reads (WATCH them before calling it)."""
    return [active_runs_key(tenant), _models_key(tenant)]


def check_new_run(r: redis.Redis, settings: Settings, tenant: str, new_model: bool) -> None:
    """429 when one more active run (or, for a ``new_model``, one more model) is over quota."""
    active = int(cast(int, r.scard(active_runs_key(tenant))))
    if active + 1 > settings.quota_active_runs:
        raise exceeded("active_runs", settings.quota_active_runs, active, "active runs")
    if new_model:
        models = int(cast(int, r.zcard(_models_key(tenant))))
        if models + 1 > settings.quota_models:
            raise exceeded("models", settings.quota_models, models, "models")


def batch_watch_keys(tenant: str) -> list[str]:
    """The keys :func:`check_new_batches` reads (WATCH them before calling it)."""
    return [_batches_key(tenant), batch_bytes_key(tenant)]


def check_new_batches(r: redis.Redis, settings: Settings, tenant: str, count: int,
                      size: int) -> None:
    """429 when ``count`` more batches of ``size`` bytes in all are over a quota."""
    batches = int(cast(int, r.zcard(_batches_key(tenant))))
    if batches + count > settings.quota_batches:
        raise exceeded("batches", settings.quota_batches, batches, "batches")
    limit = settings.quota_storage_bytes
    if limit is not None:
        used = int(cast(str | None, r.get(batch_bytes_key(tenant))) or 0)
        if used + size > limit:
            raise exceeded("storage_bytes", limit, used, "stored bytes")


def check_run_params_size(encoded: str) -> None:
    """422 when a run's parameters would make its record large (they are stored in it)."""
    size = len(encoded.encode())
    if size > MAX_RUN_PARAMS_BYTES:
        raise ValidationFailed(
            f"The training request is too large to store with the run ({size} bytes of "
            f"parameters; at most {MAX_RUN_PARAMS_BYTES}): use shorter filter lists.",
            code="request_too_large",
            details={"bytes": size, "max_bytes": MAX_RUN_PARAMS_BYTES},
        )


def usage(r: redis.Redis, settings: Settings, tenant: str) -> dict[str, Any]:
    """Each quota of the tenant with its limit and what is used (for docs and tests)."""
    pipe = r.pipeline(transaction=False)
    pipe.scard(active_runs_key(tenant))
    pipe.zcard(_models_key(tenant))
    pipe.zcard(_batches_key(tenant))
    pipe.get(batch_bytes_key(tenant))
    runs, models, batches, size = pipe.execute()
    return {
        "active_runs": {"limit": settings.quota_active_runs, "used": int(runs)},
        "models": {"limit": settings.quota_models, "used": int(models)},
        "batches": {"limit": settings.quota_batches, "used": int(batches)},
        "storage_bytes": {"limit": settings.quota_storage_bytes, "used": int(size or 0)},
    }
