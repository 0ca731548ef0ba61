"""Prometheus metrics served at ``/metrics``.

Two sources, chosen for where the events happen:

- **HTTP requests** (count and latency per endpoint, method and status) are
  counted in the API process that served them, with ``prometheus_client``.
  gunicorn runs several worker processes, so in production the client runs in
  its *multiprocess mode*: each process writes its values to memory-mapped
  files in ``PROMETHEUS_MULTIPROC_DIR`` and every scrape, whichever process
  answers it, sums all of them (``api/gunicorn_conf.py`` sets the directory up
  before the workers fork and wipes it at start). This keeps Redis off the
  request path (a request costs no extra round trip, and counts keep working
  while Redis is down) and gives per-instance series as Prometheus expects.
  Without that variable (development server, tests) the values live in this
  process only. The mode follows what ``prometheus_client`` decided when it
  was imported, so the exposition always matches how values were stored.
- **Queue depth, training runs and callback deliveries** are read from Redis
  at scrape time (``LLEN`` of the Celery queues, counters that the workers keep
  through :mod:`shared.metrics`), with a short timeout. When Redis cannot be
  read, ``recsys_redis_up`` is 0 and those families are left out; the request
  metrics are still exported, and the scrape is never a 500.

Endpoints are labelled with the Flask URL rule (``/v1/recommender/status/<model_id>``),
never the raw path, and unknown paths share the label ``unmatched``, so label
values stay bounded whatever clients send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import redis
from flask import Flask, Response, current_app, g, request
from kombu.transport.redis import Channel as RedisChannel
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _go_float
from redis.backoff import NoBackoff
from redis.retry import Retry

from api.context import services
from shared.contracts import QUEUE_CALLBACKS, QUEUE_TRAIN
from shared.metrics import (
    DELIVERY_OUTCOMES,
    RUN_DURATION_BUCKETS,
    RUN_OUTCOMES,
    WorkerCounters,
    read_counters,
)

log = logging.getLogger(__name__)

#: Seconds a scrape waits for Redis (connect and reply) before exporting without it.
SCRAPE_REDIS_TIMEOUT = 0.5
#: The Celery queues whose depth is exported.
QUEUES = (QUEUE_TRAIN, QUEUE_CALLBACKS)
# kombu's Redis transport keeps messages of priority p > 0 under ``<queue><sep><p>`` and
# the messages delivered to a worker and not yet acknowledged in the hash ``unacked_key``.
# kombu has no public call that counts these over a plain Redis client, so the names are
# read from its Redis channel, whose documented transport options they are (shared/queue.py
# overrides none of them). tests/api/test_metrics_kombu.py fails, naming the attribute, if
# kombu drops one; the known defaults keep the API starting meanwhile.
#: Separator between a queue's name and a priority step.
_PRIORITY_SEP: str = str(getattr(RedisChannel, "sep", "\x06\x16"))
#: Priority steps above 0, each with its own list.
_PRIORITY_STEPS: tuple[int, ...] = tuple(
    int(step) for step in getattr(RedisChannel, "priority_steps", (0, 3, 6, 9)) if step
)
#: The hash of messages delivered to a worker and not yet acknowledged.
_UNACKED_KEY: str = str(getattr(RedisChannel, "unacked_key", "unacked"))
#: Latency buckets (seconds): fast JSON calls up to long uploads.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_EXTENSION = "recsys_metrics"


def multiprocess_mode() -> bool:
    """True when prometheus_client stores values in PROMETHEUS_MULTIPROC_DIR files."""
    return values.ValueClass is not values.MutexValue


@dataclass
class RequestMetrics:
    """The request metrics of one app, and the registry they live in (single-process mode)."""

    requests: Counter
    latency: Histogram
    registry: CollectorRegistry | None
    scrape_client: redis.Redis | None = None
    scrape_client_for: int = 0


def _request_metrics() -> RequestMetrics:
    # Multiprocess mode: values go to the files, the exposition reads the files; registering
    # in a registry would export this process's values a second time.
    registry = None if multiprocess_mode() else CollectorRegistry()
    return RequestMetrics(
        requests=Counter(
            "recsys_http_requests",
            "HTTP requests answered, by endpoint (URL rule), method and status.",
            ["endpoint", "method", "status"],
            registry=registry,
        ),
        latency=Histogram(
            "recsys_http_request_duration_seconds",
            "Time to produce the response (to the first byte for streamed bodies).",
            ["endpoint", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        registry=registry,
    )


def init_app(app: Flask) -> None:
    """Time and count every request of ``app``."""
    metrics = _request_metrics()
    app.extensions[_EXTENSION] = metrics

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        metrics.requests.labels(endpoint, method, str(response.status_code)).inc()
        started = g.get("metrics_started")
        if started is not None:
            metrics.latency.labels(endpoint, method).observe(time.perf_counter() - started)
        return response


def _scrape_client(metrics: RequestMetrics) -> redis.Redis:
    """A client like the app's, but with short timeouts (rebuilt if the app's is replaced)."""
    base = services().redis
    if metrics.scrape_client is not None and metrics.scrape_client_for == id(base):
        return metrics.scrape_client
    pool = base.connection_pool
    client = base
    try:
        kwargs = dict(pool.connection_kwargs)
        kwargs.update(
            socket_timeout=SCRAPE_REDIS_TIMEOUT,
            socket_connect_timeout=SCRAPE_REDIS_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        client = redis.Redis(
            connection_pool=type(pool)(
                connection_class=pool.connection_class, max_connections=4, **kwargs
            )
        )
    except Exception as exc:  # an unusual client (a test double): use it as it is
        log.debug("scrape client: using the app's Redis client (%s)", exc)
    metrics.scrape_client, metrics.scrape_client_for = client, id(base)
    return client


def _le(value: float) -> str:
    """A bucket bound as Prometheus writes it ("60.0", "+Inf")."""
    return str(_go_float(value))  # type: ignore[no-untyped-call]


def _queue_keys(queue: str) -> list[str]:
    return [queue, *(f"{queue}{_PRIORITY_SEP}{step}" for step in _PRIORITY_STEPS)]


class RedisStateCollector(Collector):
    """Queue depths and the worker-side counters, read from Redis at scrape time."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        """Yield what Redis can tell now; only ``recsys_redis_up 0`` when it cannot."""
        up = GaugeMetricFamily(
            "recsys_redis_up", "1 when this scrape could read Redis, else 0."
        )
        try:
            pipe = self.client.pipeline(transaction=False)
            for queue in QUEUES:
                for key in _queue_keys(queue):
                    pipe.llen(key)
            pipe.hlen(_UNACKED_KEY)
            replies = pipe.execute()
            counters = read_counters(self.client)
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics: Redis unreadable during a scrape: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _memory_families(self.client)
        yield from _queue_families(replies)
        yield from _run_families(counters)
        yield _delivery_family(counters)


#: Share of ``maxmemory`` above which each scrape logs a warning (writes fail at 100 %).
MEMORY_WARN_RATIO = 0.8


def _memory_families(client: redis.Redis) -> Iterator[GaugeMetricFamily]:
    """Redis memory in use and its ``maxmemory`` (0: no limit); a warning above 80 %."""
    try:
        info = cast(dict[str, Any], client.info("memory"))
        used, limit = int(info["used_memory"]), int(info.get("maxmemory", 0))
    except (redis.RedisError, OSError, KeyError, ValueError) as exc:
        log.debug("metrics: no Redis memory figures: %s", exc)
        return
    if limit and used >= MEMORY_WARN_RATIO * limit:
        log.warning("Redis uses %d of its maxmemory %d bytes (%.0f %%); at 100 %% every write "
                    "fails: raise maxmemory or remove data", used, limit, 100 * used / limit)
    for name, value, text in (
        ("recsys_redis_memory_used_bytes", used, "Memory Redis uses (INFO used_memory)."),
        ("recsys_redis_maxmemory_bytes", limit,
         "Redis's maxmemory (0: no limit); writes fail once used memory reaches it."),
    ):
        family = GaugeMetricFamily(name, text)
        family.add_metric([], value)
        yield family


def _queue_families(replies: list[Any]) -> Iterator[GaugeMetricFamily]:
    """Queue depths and unacknowledged messages, from the replies of the scrape's pipeline."""
    depth = GaugeMetricFamily(
        "recsys_queue_depth", "Messages waiting in a Celery queue.", labels=["queue"]
    )
    per_queue = len(_PRIORITY_STEPS) + 1
    for i, queue in enumerate(QUEUES):
        waiting = replies[i * per_queue : (i + 1) * per_queue]
        depth.add_metric([queue], sum(int(v) for v in waiting))
    yield depth
    unacked = GaugeMetricFamily(
        "recsys_queue_unacked",
        "Messages delivered to workers and not yet acknowledged (running or reserved).",
    )
    unacked.add_metric([], int(replies[-1]))
    yield unacked


def _run_families(
    counters: WorkerCounters,
) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
    """Ended training runs and their durations, by outcome (known outcomes always listed)."""
    runs = CounterMetricFamily(
        "recsys_training_runs", "Training runs that ended, by outcome.", labels=["outcome"]
    )
    durations = HistogramMetricFamily(
        "recsys_training_run_duration_seconds",
        "Wall-clock duration of ended training runs, by outcome.",
        labels=["outcome"],
    )
    empty = [(_le(b), 0.0) for b in RUN_DURATION_BUCKETS] + [("+Inf", 0.0)]
    outcomes = list(RUN_OUTCOMES) + sorted(set(counters.runs) - set(RUN_OUTCOMES))
    for outcome in outcomes:
        hist = counters.runs.get(outcome)
        runs.add_metric([outcome], hist.count if hist else 0)
        buckets = (
            [(_le(float(le)), n) for le, n in hist.buckets] if hist else empty
        )
        durations.add_metric([outcome], buckets, hist.sum_s if hist else 0.0)
    yield runs
    yield durations


def _delivery_family(counters: WorkerCounters) -> CounterMetricFamily:
    """Callback delivery attempts, by outcome (known outcomes always listed)."""
    deliveries = CounterMetricFamily(
        "recsys_callback_deliveries",
        "Callback delivery attempts, by outcome (delivered, retry, failed).",
        labels=["outcome"],
    )
    known = list(DELIVERY_OUTCOMES) + sorted(set(counters.deliveries) - set(DELIVERY_OUTCOMES))
    for outcome in known:
        deliveries.add_metric([outcome], counters.deliveries.get(outcome, 0))
    return deliveries


def render() -> bytes:
    """The whole exposition for the current app, in Prometheus text format."""
    metrics: RequestMetrics | None = current_app.extensions.get(_EXTENSION)
    registry = CollectorRegistry()
    if multiprocess_mode():
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    if metrics is not None:
        registry.register(RedisStateCollector(_scrape_client(metrics)))
    parts = [generate_latest(registry)]
    if metrics is not None and metrics.registry is not None:
        parts.append(generate_latest(metrics.registry))
    return b"".join(parts)
