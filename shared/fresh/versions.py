"""Kept versions side by side, and ``POST /models/<model_id>/serve`` (serve and pin a version).

A pin is the model record's ``pinned`` flag: while it is set, a run that
completes is kept as a new version but does not become serving
(:func:`shared.runs.ending.complete_run`), until the next ``serve``.
"""

from __future__ import annotations

import json
from typing import Any, cast

import redis

from shared.errors import NotFound
from shared.registry import redis_guard
from shared.runs.records import get_model, get_run, model_key, now_iso


def kept_versions(r: redis.Redis, tenant: str, model: dict[str, Any]) -> list[dict[str, Any]]:
    """Each kept version with its metrics, newest first, for ``GET /models/<model_id>``."""
    rows = []
    for version in sorted(model.get("versions") or [], reverse=True):
        record = get_run(r, tenant, model["model_id"], int(version)) or {}
        training = record.get("training") or {}
        rows.append({
            "version": int(version),
            "serving": version == model.get("serving_version"),
            "end_timestamp": record.get("end_timestamp") or None,
            "counts": record.get("counts"),
            "metrics": record.get("metrics"),
            "parent_version": training.get("parent_version"),
        })
    return rows


def serve_version(r: redis.Redis, tenant: str, model_id: str, version: int,
                  pin: bool = True) -> dict[str, Any]:
    """Make a kept version serving at once (pinned unless ``pin`` is False); the model."""
    key = model_key(tenant, model_id)
    with redis_guard("serving a model version"), r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                raw = cast(str | None, pipe.hget(key, "versions"))
                if raw is None:
                    pipe.unwatch()
                    raise NotFound(f"There is no model '{model_id}'.", code="model_not_found",
                                   details={"model_id": model_id})
                kept = json.loads(raw or "[]")
                if version not in kept:
                    pipe.unwatch()
                    raise NotFound(
                        f"Model '{model_id}' keeps no version {version}; kept: {kept}.",
                        code="version_not_found",
                        details={"model_id": model_id, "version": version, "versions": kept})
                pipe.multi()
                pipe.hset(key, mapping={"serving_version": str(version),
                                        "pinned": "1" if pin else "",
                                        "updated_at": now_iso()})
                pipe.execute()
                break
            except redis.WatchError:
                continue
    model = get_model(r, tenant, model_id)
    assert model is not None
    return model
