"""The worker's Celery application: the Procfile's ``celery -A worker.celery_app`` points here.

Its configuration comes from :mod:`shared.queue` (the same settings the API's
producer uses), read from the environment when Celery first configures the app,
at process start, not at import time.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery, signals

from shared.config import Settings
from shared.logs import configure_logging
from shared.queue import configure, make_celery, settings_of
from worker.flower import no_sent_events_from_beat
from worker.warmup import warm_up

#: Modules that define tasks; imported by workers only (never by the API).
TASK_MODULES = ["worker.tasks", "worker.callbacks", "worker.tuning.tasks", "worker.schedules"]


def make_worker_app(settings: Settings) -> Celery:
    """A worker app for ``settings`` with the task modules (tests start workers with it)."""
    return make_celery(settings, include=TASK_MODULES)


def _configure_from_env(sender: Celery, **_: Any) -> None:
    configure(sender, Settings.from_env())


app = Celery("recsys", include=TASK_MODULES)
app.on_configure.connect(_configure_from_env)
# Beat publishes only housekeeping: no task-sent events for Flower's list (worker/flower.py).
signals.beat_init.connect(no_sent_events_from_beat, weak=False, dispatch_uid="recsys.beat")


@signals.setup_logging.connect(weak=False)
def _setup_logging(**_: Any) -> None:
    """Worker and beat log in the service's format instead of Celery's default."""
    settings = settings_of(app)
    configure_logging(settings.log_level, settings.log_format)


@signals.worker_process_init.connect(weak=False)
def _warm_up_child(**_: Any) -> None:
    """Each prefork child imports the training code in the background, off the first run's clock."""
    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
