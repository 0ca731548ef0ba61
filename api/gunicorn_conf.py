"""gunicorn settings and hooks for the API (``gunicorn -c python:api.gunicorn_conf ...``).

- Metrics: prometheus_client's multiprocess mode needs ``PROMETHEUS_MULTIPROC_DIR``
  set before any worker imports it, and emptied when the server starts (values
  from an earlier run would otherwise be added in). The master does both here,
  before it forks the workers, and tells the client when a worker exits. Two
  gunicorn masters must not share the directory: give each its own
  ``PROMETHEUS_MULTIPROC_DIR`` (or data directory).
- Logs: gunicorn's own lines (boot, worker exits, timeouts) use the service's
  structured format (:mod:`shared.logs`); its access log is silenced because
  the app writes a richer one (``recsys.access``, with request id and tenant).
- Errors: the pages gunicorn writes itself (a request line over
  ``limit_request_line``, 4094 bytes, gets 414; bad headers 400 or 431) are JSON
  in the contract's error shape (:mod:`api.server_errors`, installed in each
  worker by ``post_worker_init``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.logs import JsonFormatter, TextFormatter

#: Where request metrics live when PROMETHEUS_MULTIPROC_DIR is not set: <data dir>/<this>.
METRICS_SUBDIR = "prometheus-web"


def log_formatter() -> logging.Formatter:
    """The formatter RECSYS_LOG_FORMAT asks for (called by logging's dictConfig at start)."""
    return TextFormatter() if Settings.from_env().log_format == "text" else JsonFormatter()


logconfig_dict: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    # The workers' root handler is installed by create_app; none here, or lines would double.
    "root": {"level": "INFO", "handlers": []},
    "formatters": {"recsys": {"()": "api.gunicorn_conf.log_formatter"}},
    "filters": {"context": {"()": "shared.logs.ContextFilter"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "recsys",
            "filters": ["context"],
            "stream": "ext://sys.stderr",
        }
    },
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
    },
}


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


def post_worker_init(worker: Any) -> None:
    """gunicorn's own error pages become JSON in this worker (see api/server_errors.py)."""
    from api import server_errors

    server_errors.install()


def child_exit(server: Any, worker: Any) -> None:
    """Let prometheus_client drop a dead worker's live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
