"""Webhook deliveries of finished runs: the persisted record and schedule (interface)."""

from __future__ import annotations

import redis
from celery import Celery

from shared.contracts import CallbackStatus, RunStatus


def callback_status(
    r: redis.Redis, tenant: str, model_id: str, version: int
) -> CallbackStatus | None:
    """The ``callback`` field of a run's status; None when the run has no callback_url."""
    return None


def schedule_for_run(
    r: redis.Redis,
    celery: Celery,
    tenant: str,
    model_id: str,
    version: int,
    callback_url: str,
    status: RunStatus,
) -> None:
    """Record one delivery for a finished run (idempotent per run) and enqueue its first try."""
