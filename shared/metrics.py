"""Counters of worker-side events, kept in Redis so that ``/metrics`` on any API process shows them.

Training runs and callback deliveries end in worker processes, possibly on
other machines; the API's ``/metrics`` reads these counters at scrape time.
Keeping them in Redis (one ``HINCRBY`` pipeline per event) is the simplest
thing that is right across processes and hosts, and it survives restarts of
both workers and API. Because every API process exports the same
cluster-wide values, aggregate them with ``max`` (not ``sum``) over instances.

Callers (the training and callback tasks) call :func:`record_run_finished`
and :func:`record_delivery`; a failure to record is logged and never raised,
so metrics can never fail a run or a delivery.

Layout: the hashes ``recsys:metrics:runs`` and ``recsys:metrics:deliveries``
with fields ``count:<outcome>``, ``sum:<outcome>`` (seconds) and
``bucket:<outcome>:<le>`` (observations in that bucket only; the exporter
makes them cumulative).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from shared.registry import as_str_dict, global_key

log = logging.getLogger(__name__)

RUNS_KEY = global_key("metrics", "runs")
DELIVERIES_KEY = global_key("metrics", "deliveries")

#: How a run can end; anything else is counted as ``other`` (keeps label values bounded).
RUN_OUTCOMES = ("completed", "error", "cancelled")
#: How one delivery attempt can end: ``delivered`` (2xx), ``retry`` (retryable failure,
#: another attempt scheduled), ``failed`` (permanent failure or retries used up).
DELIVERY_OUTCOMES = ("delivered", "retry", "failed")
#: Upper bounds (seconds) of the run-duration histogram buckets; +Inf is implied.
RUN_DURATION_BUCKETS: tuple[float, ...] = (
    10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800,
)


def _outcome(value: str, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else "other"


def _bucket_label(upper: float) -> str:
    return "+Inf" if math.isinf(upper) else f"{upper:g}"


def record_run_finished(r: redis.Redis, outcome: str, duration_s: float) -> None:
    """Count a finished training run (``completed``/``error``/``cancelled``) and its duration."""
    name = _outcome(outcome, RUN_OUTCOMES)
    duration = max(0.0, float(duration_s)) if math.isfinite(duration_s) else 0.0
    upper = next((b for b in RUN_DURATION_BUCKETS if duration <= b), math.inf)
    try:
        pipe = r.pipeline(transaction=False)
        pipe.hincrby(RUNS_KEY, f"count:{name}", 1)
        pipe.hincrbyfloat(RUNS_KEY, f"sum:{name}", duration)
        pipe.hincrby(RUNS_KEY, f"bucket:{name}:{_bucket_label(upper)}", 1)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not record a finished run in metrics: %s", exc)


def record_delivery(r: redis.Redis, outcome: str) -> None:
    """Count one callback delivery attempt by outcome (``delivered``/``retry``/``failed``)."""
    try:
        r.hincrby(DELIVERIES_KEY, f"count:{_outcome(outcome, DELIVERY_OUTCOMES)}", 1)
    except redis.RedisError as exc:
        log.warning("could not record a callback delivery in metrics: %s", exc)


@dataclass(frozen=True)
class RunHistogram:
    """Cumulative bucket counts, sum and count of run durations for one outcome."""

    buckets: list[tuple[str, float]]
    sum_s: float
    count: int


@dataclass(frozen=True)
class WorkerCounters:
    """A snapshot of the worker-side counters."""

    runs: dict[str, RunHistogram] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)


def _histograms(raw: Mapping[str, str]) -> dict[str, RunHistogram]:
    outcomes = {k.split(":", 2)[1] for k in raw if k.startswith("count:")}
    result: dict[str, RunHistogram] = {}
    uppers = [*RUN_DURATION_BUCKETS, math.inf]
    for name in sorted(outcomes):
        running = 0.0
        buckets: list[tuple[str, float]] = []
        for upper in uppers:
            label = _bucket_label(upper)
            running += float(raw.get(f"bucket:{name}:{label}", 0))
            buckets.append((label, running))
        count = int(float(raw.get(f"count:{name}", 0)))
        # +Inf must equal the count even if a bucket write was lost.
        buckets[-1] = ("+Inf", float(count))
        result[name] = RunHistogram(buckets, float(raw.get(f"sum:{name}", 0.0)), count)
    return result


def read_counters(r: redis.Redis) -> WorkerCounters:
    """Read every worker-side counter in one round trip (raises redis errors to the caller)."""
    pipe = r.pipeline(transaction=False)
    pipe.hgetall(RUNS_KEY)
    pipe.hgetall(DELIVERIES_KEY)
    runs_raw, deliveries_raw = pipe.execute()
    runs: Any = as_str_dict(runs_raw)
    deliveries = {
        k.split(":", 1)[1]: int(float(v))
        for k, v in as_str_dict(deliveries_raw).items()
        if k.startswith("count:")
    }
    return WorkerCounters(runs=_histograms(runs), deliveries=deliveries)
