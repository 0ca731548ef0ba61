"""Request context for logs, and one access-log line per request.

The request id itself is set by :func:`api.app.create_app` (``g.request_id``,
from ``X-Request-Id`` or a new uuid); this module makes it, and the tenant
once the API key is known, part of every log line written while the request
is handled, and of every task it enqueues (see :mod:`shared.logs`).
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, has_request_context, request

from shared.logs import add_context_provider

access_log = logging.getLogger("recsys.access")

#: Longest X-Request-Id accepted as given; a longer one is cut (it ends up in every log line).
MAX_REQUEST_ID = 128


def _flask_context() -> dict[str, str | None]:
    if not has_request_context():
        return {}
    key = g.get("api_key")
    return {
        "request_id": g.get("request_id"),
        "tenant": getattr(key, "tenant", None),
    }


def init_app(app: Flask) -> None:
    """Register the log context provider and the access-log hooks."""
    add_context_provider(_flask_context)

    @app.before_request
    def _start_clock() -> None:
        g.reqlog_started = time.perf_counter()
        request_id = g.get("request_id")
        if isinstance(request_id, str) and len(request_id) > MAX_REQUEST_ID:
            g.request_id = request_id[:MAX_REQUEST_ID]

    @app.after_request
    def _access_line(response: Response) -> Response:
        started = g.get("reqlog_started")
        duration_ms = (time.perf_counter() - started) * 1000 if started is not None else None
        access_log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "method": request.method,
                "path": request.path,
                "endpoint": request.url_rule.rule if request.url_rule else None,
                "status": response.status_code,
                "duration_ms": None if duration_ms is None else round(duration_ms, 2),
            },
        )
        return response
