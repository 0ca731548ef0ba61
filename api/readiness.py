"""Readiness, probed in the background and cached per process.

``/readyz`` needs no key, so it must stay cheap however often it is called: a
Celery ping waits ``PING_TIMEOUT`` for worker replies, and doing that inside
each request let 64 callers hold every request thread (issue #19). Here one
daemon thread per API process probes Redis, storage and the workers at most
once every :data:`MIN_INTERVAL` seconds while someone is asking, and requests
read the last result. Only the very first request of a process waits for a
result (at most :data:`FIRST_WAIT` seconds); the thread stops after
:data:`IDLE_STOP` seconds without a request and starts again on the next.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Seconds between the starts of two probes, at least.
MIN_INTERVAL = 1.0
#: Seconds the first request of a process waits for the first probe.
FIRST_WAIT = 3.0
#: Seconds without a request after which the probing thread stops.
IDLE_STOP = 30.0


@dataclass(frozen=True)
class Result:
    """One probe: each check's text, and when it finished (monotonic seconds)."""

    checks: dict[str, str]
    ready: bool
    at: float


class Readiness:
    """The process's cached readiness; :meth:`current` never waits once a probe ran."""

    def __init__(self, probe: Callable[[], tuple[bool, dict[str, str]]]) -> None:
        self._probe = probe
        self._lock = threading.Lock()
        self._first = threading.Event()
        self._result: Result | None = None
        self._thread: threading.Thread | None = None
        self._asked = 0.0
        #: Probes run so far (tests count them).
        self.probes = 0

    def current(self) -> Result | None:
        """The latest result; waits for the first one only (None if it is still running)."""
        with self._lock:
            self._asked = time.monotonic()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="readiness",
                                                daemon=True)
                self._thread.start()
        if self._result is None:
            self._first.wait(FIRST_WAIT)
        return self._result

    def _loop(self) -> None:
        while True:
            started = time.monotonic()
            with self._lock:
                if started - self._asked > IDLE_STOP:
                    self._thread = None
                    return
            try:
                ready, checks = self._probe()
            except Exception as exc:  # a probe must never kill the thread
                ready, checks = False, {"probe": f"failed: {type(exc).__name__}"}
            self.probes += 1
            self._result = Result(checks, ready, time.monotonic())
            self._first.set()
            time.sleep(max(0.0, MIN_INTERVAL - (time.monotonic() - started)))
