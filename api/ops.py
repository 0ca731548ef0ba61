"""Operations endpoints: liveness, readiness, Prometheus metrics and the API's index (no key)."""

from __future__ import annotations

import functools
import re
import threading
import time
from typing import Any, cast

import redis
from flask import Response, current_app, request
from flask.views import MethodView
from prometheus_client import CONTENT_TYPE_LATEST

from api import metrics
from api.context import Services, services
from api.errors import error_response
from api.parsing import Blueprint
from api.readiness import Readiness
from shared.errors import DependencyUnavailable

blp = Blueprint("ops", __name__, description="Health, readiness and metrics (no API key).")

#: Seconds readiness waits for a worker to answer a ping.
PING_TIMEOUT = 1.0
#: Where the API's resources live (docs/api.md); ``GET`` on it lists them.
INDEX_PATH = "/v1/recommender"
#: Methods every route answers that say nothing about the resource.
_IMPLICIT_METHODS = {"HEAD", "OPTIONS"}
#: A werkzeug path variable (``<string:model_id>``), written as OpenAPI writes it.
_VARIABLE = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


@blp.route(INDEX_PATH)
class Index(MethodView):
    @blp.doc(security=[])
    @blp.response(200)
    def get(self) -> dict[str, Any]:
        """The API's resources (paths and methods) and where its documentation is."""
        resources: dict[str, set[str]] = {}
        for rule in current_app.url_map.iter_rules():
            if rule.rule.startswith(INDEX_PATH + "/"):
                methods = set(rule.methods or ()) - _IMPLICIT_METHODS
                path = _VARIABLE.sub(r"{\1}", rule.rule)
                resources.setdefault(path, set()).update(methods)
        root = request.host_url.rstrip("/")
        return {
            "name": current_app.config.get("API_TITLE", "recsys"),
            "version": current_app.config.get("API_VERSION", ""),
            "docs": root + "/docs",
            "openapi": root + "/openapi.json",
            "resources": [{"path": path, "methods": sorted(methods)}
                          for path, methods in sorted(resources.items())],
        }


@blp.route("/healthz")
class Health(MethodView):
    @blp.doc(security=[])
    @blp.response(200)
    def get(self) -> dict[str, str]:
        """The API process is up."""
        return {"status": "ok"}


def probe(svc: Services) -> tuple[bool, dict[str, str]]:
    """Redis, storage and a worker ping: (ready, each check's text). Runs in the background."""
    checks: dict[str, str] = {}
    try:
        svc.redis.ping()
        checks["redis"] = "ok"
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    try:
        svc.storage.check()
        checks["storage"] = "ok"
    except DependencyUnavailable as exc:
        checks["storage"] = exc.message
    replies: list[Any] = []
    if checks["redis"] == "ok":
        try:
            replies = svc.celery.control.ping(timeout=PING_TIMEOUT)
        except Exception as exc:  # kombu raises assorted connection errors
            checks["workers"] = f"unreachable: {type(exc).__name__}"
        else:
            checks["workers"] = (
                f"{len(replies)} answering" if replies else "no worker answered a ping"
            )
    else:
        checks["workers"] = "unknown (Redis is down)"
    return checks["redis"] == "ok" and checks["storage"] == "ok" and bool(replies), checks


_readiness_lock = threading.Lock()


def readiness() -> Readiness:
    """The app's cached readiness (one background prober per process)."""
    extensions = current_app.extensions
    found = extensions.get("recsys_readiness")
    if found is None:
        with _readiness_lock:
            found = extensions.get("recsys_readiness")
            if found is None:
                # the probe is bound now: a prober thread of another app in this process
                # never runs a probe replaced since (tests replace it per app)
                found = extensions["recsys_readiness"] = Readiness(
                    functools.partial(probe, services()))
    return cast(Readiness, found)


@blp.route("/readyz")
class Ready(MethodView):
    @blp.doc(security=[])
    @blp.response(200)
    @blp.alt_response(503, description="Redis, storage or every worker is unreachable.")
    def get(self) -> Any:
        """Redis and storage reachable, and at least one worker answering a ping.

        Probed in the background at most once a second per API process; the answer
        is the latest probe (``age_seconds`` old), so calling this never waits on it.
        """
        result = readiness().current()
        if result is None:
            checks = {"probe": "the first readiness probe has not finished yet"}
            ready, age = False, 0.0
        else:
            checks, ready = result.checks, result.ready
            age = round(time.monotonic() - result.at, 3)
        if not ready:
            failing = {k: v for k, v in checks.items() if not v.startswith(("ok", "1", "2"))}
            reason = "; ".join(f"{k}: {v}" for k, v in failing.items())
            response = error_response(
                503, "not_ready", f"Not ready: {reason}.",
                {"checks": checks, "age_seconds": age},
            )
            response.headers["Retry-After"] = "5"
            return response
        return {"status": "ready", "checks": checks, "age_seconds": age}


@blp.route("/metrics")
class MetricsEndpoint(MethodView):
    @blp.doc(security=[])
    @blp.response(200, content_type=CONTENT_TYPE_LATEST)
    def get(self) -> Response:
        """Prometheus metrics in the text exposition format (see api/metrics.py for the list)."""
        return Response(metrics.render(), mimetype=CONTENT_TYPE_LATEST)
