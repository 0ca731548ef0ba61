"""Per-process services for tasks: settings, Redis client and storage, built once."""

from __future__ import annotations

from celery import Celery

from shared.queue import settings_of
from shared.registry import connect
from shared.runs.service import ProcessServices
from shared.storage import open_storage


class WorkerServices(ProcessServices):
    """What a task needs besides its arguments."""


_cache: dict[int, WorkerServices] = {}


def worker_services(celery: Celery) -> WorkerServices:
    """The services of this process for ``celery`` (created on first use, after fork)."""
    found = _cache.get(id(celery))
    if found is None:
        settings = settings_of(celery)
        found = WorkerServices(
            settings=settings,
            redis=connect(settings),
            storage=open_storage(settings.storage_root()),
            celery=celery,
        )
        _cache[id(celery)] = found
    return found
