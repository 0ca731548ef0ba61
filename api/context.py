"""The per-app services (settings, Redis, storage, Celery client, runs) blueprints use."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import cast

import redis
from celery import Celery
from flask import current_app

from shared.config import Settings
from shared.runs.service import Runs
from shared.storage import Storage


@dataclass(frozen=True)
class Services:
    """Built once by :func:`api.app.create_app`; shared by every request of the process."""

    settings: Settings
    redis: redis.Redis
    storage: Storage
    celery: Celery

    @cached_property
    def runs(self) -> Runs:
        """The run lifecycle on the app's Redis, producer and settings."""
        return Runs(self.redis, self.celery, self.settings)


def services() -> Services:
    """The current app's services."""
    return cast(Services, current_app.extensions["recsys"])
