"""gunicorn hooks for the API (``gunicorn -c python:api.gunicorn_conf ...``).

prometheus_client's multiprocess mode needs ``PROMETHEUS_MULTIPROC_DIR`` set
before any worker imports it, and emptied when the server starts (values from
an earlier run would otherwise be added in). The master does both here,
before it forks the workers, and tells the client when a worker exits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from shared.config import Settings

#: Where request metrics live when PROMETHEUS_MULTIPROC_DIR is not set: <data dir>/<this>.
METRICS_SUBDIR = "prometheus-web"


def on_starting(server: Any) -> None:
    """Prepare an empty multiprocess metrics directory and export it to the workers."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = str(Settings.from_env().data_dir / METRICS_SUBDIR)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """Let prometheus_client drop a dead worker's live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
