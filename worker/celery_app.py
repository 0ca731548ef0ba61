"""The Celery application: configuration from :class:`~shared.config.Settings`.

``make_celery(settings)`` builds a configured app (tests and the API use it);
the module-level ``app`` is what the Procfile's ``celery -A worker.celery_app``
points at. It reads the environment when Celery first configures it, at
process start, not at import time.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery, signals

from shared.config import Settings
from shared.contracts import (
    QUEUE_CALLBACKS,
    QUEUE_TRAIN,
    TASK_DELIVER_CALLBACK,
    TASK_PROGRESS_PROBE,
    TASK_RECONCILE_RUNS,
    TASK_SCAN_CALLBACKS,
    TASK_TRAIN,
)
from shared.logs import configure_logging, connect_celery_signals

#: Modules that define tasks; imported by workers only (never by the API).
TASK_MODULES = ["worker.tasks", "worker.callbacks"]


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
        },
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        "worker_max_tasks_per_child": 50,
        "beat_schedule": {
            "reconcile-runs": {
                "task": TASK_RECONCILE_RUNS,
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


def make_celery(settings: Settings, *, include_tasks: bool = True) -> Celery:
    """A Celery app configured for ``settings``; the API passes ``include_tasks=False``."""
    celery = Celery("recsys", include=TASK_MODULES if include_tasks else [])
    celery.conf.update(celery_config(settings))
    celery.recsys_settings = settings
    return celery


def _configure_from_env(sender: Celery, **_: Any) -> None:
    settings = Settings.from_env()
    sender.conf.update(celery_config(settings))
    sender.recsys_settings = settings


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


app = Celery("recsys", include=TASK_MODULES)
app.on_configure.connect(_configure_from_env)


# Structured logs with the request id carried from the API into tasks (shared/logs.py).
connect_celery_signals()


@signals.setup_logging.connect(weak=False)
def _setup_logging(**_: Any) -> None:
    """Worker and beat log in the service's format instead of Celery's default."""
    settings = settings_of(app)
    configure_logging(settings.log_level, settings.log_format)


def _warm_up() -> None:
    from worker.runner import warm_up

    warm_up()


@signals.worker_process_init.connect(weak=False)
def _warm_up_child(**_: Any) -> None:
    """Each prefork child imports the training code in the background, off the first run's clock."""
    import threading

    threading.Thread(target=_warm_up, name="warm-up", daemon=True).start()
