"""Work in a request that grows with the data (data summaries, dry runs), with a time limit.

``/dataset`` and ``POST /train`` with ``dry_run`` read and assemble the
selected data inside the API. Here that work runs on a small per-process pool
(:data:`WORKERS` threads) and the request waits at most
``RECSYS_DATA_SUMMARY_TIME_LIMIT`` seconds for it; past that, or when every
pool thread is still busy, the answer is 503 ``try_later`` with
``Retry-After``. Python cannot stop a thread, so work whose request gave up
runs to its end on the pool, but it holds one of only :data:`WORKERS`
threads: however many such requests arrive, the API never does more than
that much of this work at once, and its request threads stay free.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar, cast

from flask import Flask, current_app

from shared.errors import TryLater

T = TypeVar("T")

#: Data summaries and dry runs one API process works on at once.
WORKERS = 2

_create_lock = threading.Lock()


class BoundedWork:
    """A small pool that refuses work when full and stops waiting at a time limit."""

    def __init__(self, workers: int = WORKERS) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="bounded-work")
        self._free = threading.BoundedSemaphore(workers)

    def run(self, app: Flask, work: Callable[[], T], limit: float, what: str) -> T:
        """``work()`` inside ``app``'s context, or TryLater past ``limit`` seconds or when full."""
        if not self._free.acquire(blocking=False):
            raise _try_later(f"The API is busy with other {what}s", limit)

        def call() -> T:
            try:
                with app.app_context():
                    return work()
            finally:
                self._free.release()

        future = self._pool.submit(call)
        try:
            return future.result(timeout=limit)
        except FutureTimeout:
            raise _try_later(f"This {what} takes longer than the API's limit of {limit:g} s",
                             limit) from None


def _try_later(reason: str, limit: float) -> TryLater:
    return TryLater(
        f"{reason}; try again later, or narrow the selection (data_tags, data_filters, "
        "maximum_interaction_age_days). A training run has no such limit.",
        details={"time_limit_seconds": limit, "retry_after_seconds": TryLater.retry_after},
    )


def bounded(work: Callable[[], T], what: str) -> T:
    """Run ``work`` on the current app's bounded pool (see the module docstring)."""
    app = cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]
    pool = app.extensions.get("recsys_bounded")
    if pool is None:
        with _create_lock:
            pool = app.extensions.setdefault("recsys_bounded", BoundedWork())
    limit = float(app.extensions["recsys"].settings.data_summary_time_limit)
    return cast(BoundedWork, pool).run(app, work, limit, what)
