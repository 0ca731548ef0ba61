"""Per-process services for tasks: settings, Redis client and storage, built once."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import redis
from celery import Celery

from shared.config import Settings
from shared.queue import settings_of
from shared.registry import connect
from shared.runs.service import Runs
from shared.storage import Storage, open_storage


@dataclass(frozen=True)
class WorkerServices:
    """What a task needs besides its arguments."""

    settings: Settings
    redis: redis.Redis
    storage: Storage
    celery: Celery

    @cached_property
    def runs(self) -> Runs:
        """The run lifecycle on this process's Redis, producer and settings."""
        return Runs(self.redis, self.celery, self.settings)


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
