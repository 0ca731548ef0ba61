"""The Celery configuration both sides share, and the producer the API enqueues with.

The API enqueues by task *name* (``send_task``) through :func:`make_producer`, so
it never imports worker code; the worker's app (:mod:`worker.celery_app`) is
built from the same :func:`celery_config`. Both connect the publish hook of
:mod:`shared.logs` here, so the request id travels into tasks whichever side
publishes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery

from shared.config import Settings
from shared.contracts import (
    QUEUE_CALLBACKS,
    QUEUE_TRAIN,
    TASK_DELIVER_CALLBACK,
    TASK_PROGRESS_PROBE,
    TASK_RECONCILE_RUNS,
    TASK_SCAN_CALLBACKS,
    TASK_SCHEDULE_TICK,
    TASK_TRAIN,
    TASK_TUNE,
    TASK_TUNE_CHECK,
    TASK_TUNE_TRIAL,
)
from shared.logs import connect_celery_signals


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting, derived from the service settings."""
    url = settings.effective_redis_url()
    visibility = {"visibility_timeout": settings.visibility_timeout}
    return {
        "broker_url": url,
        "result_backend": url,
        # The visibility timeout must exceed the hard time limit in all three places
        # Celery reads it, or a long run is re-delivered while still running.
        "broker_transport_options": {**visibility, "socket_connect_timeout": 2},
        "result_backend_transport_options": dict(visibility),
        "visibility_timeout": settings.visibility_timeout,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 2,
        "redis_socket_connect_timeout": 2,
        "redis_socket_timeout": 10,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_expires": timedelta(days=7),
        "result_extended": True,
        "task_track_started": True,
        "task_default_queue": QUEUE_CALLBACKS,
        "task_routes": {
            TASK_TRAIN: {"queue": QUEUE_TRAIN},
            TASK_PROGRESS_PROBE: {"queue": QUEUE_TRAIN},
            TASK_DELIVER_CALLBACK: {"queue": QUEUE_CALLBACKS},
            TASK_SCAN_CALLBACKS: {"queue": QUEUE_CALLBACKS},
            TASK_RECONCILE_RUNS: {"queue": QUEUE_CALLBACKS},
            TASK_TUNE: {"queue": QUEUE_TRAIN},
            TASK_TUNE_TRIAL: {"queue": QUEUE_TRAIN},
            TASK_TUNE_CHECK: {"queue": QUEUE_CALLBACKS},
            TASK_SCHEDULE_TICK: {"queue": QUEUE_CALLBACKS},
        },
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        "worker_max_tasks_per_child": 50,
        **_beat(settings, url),
    }


def _beat(settings: Settings, url: str) -> dict[str, Any]:
    """Beat's settings: redbeat (schedules in Redis) and the periodic housekeeping tasks."""
    return {
        # Beat keeps its schedule in Redis (celery-redbeat): model schedules are added and
        # removed at run time, one beat holds the lock and fires each tick however many run,
        # and entries survive restarts. beat_schedule below is loaded into it at start.
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "redbeat_redis_url": url,
        "redbeat_key_prefix": "recsys:redbeat:",
        # beat waits out a Redis restart (retrying with backoff) instead of exiting
        "redbeat_redis_options": {"retry_period": -1, "socket_connect_timeout": 2},
        "beat_max_loop_interval": settings.beat_max_loop_interval,
        "redbeat_lock_timeout": max(30, int(settings.beat_max_loop_interval * 5)),
        "beat_schedule": {
            "reconcile-runs": {
                "task": TASK_RECONCILE_RUNS,
                "schedule": settings.reconcile_interval,
                "options": {"expires": settings.reconcile_interval},
            },
            "check-searches": {  # lost tuning trials (worker/tuning/search.py)
                "task": TASK_TUNE_CHECK,
                "schedule": settings.reconcile_interval,
                "options": {"expires": settings.reconcile_interval},
            },
            "scan-callbacks": {
                "task": TASK_SCAN_CALLBACKS,
                "schedule": 5.0,
                "options": {"expires": 5.0},
            },
        },
    }


def make_celery(settings: Settings, *, include: list[str] | None = None) -> Celery:
    """A Celery app configured for ``settings``; ``include`` names task modules (workers only)."""
    celery = Celery("recsys", include=include or [])
    configure(celery, settings)
    return celery


def make_producer(settings: Settings) -> Celery:
    """The API's Celery client: publishes tasks by name, defines none."""
    return make_celery(settings)


def configure(celery: Celery, settings: Settings) -> None:
    """Apply ``settings`` to ``celery`` and connect the request-id publish hook."""
    celery.conf.update(celery_config(settings))
    celery.recsys_settings = settings
    connect_celery_signals()


def settings_of(celery: Celery) -> Settings:
    """The Settings an app was configured with."""
    settings = getattr(celery, "recsys_settings", None)
    if settings is None:
        celery.loader.import_default_modules()
        settings = getattr(celery, "recsys_settings", None)
    if not isinstance(settings, Settings):
        settings = Settings.from_env()
        celery.recsys_settings = settings
    return settings
