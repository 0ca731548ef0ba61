"""celery beat's scheduler with a heartbeat file, for a container healthcheck.

The compose file runs beat with ``--scheduler recsys_beat_heartbeat:HeartbeatScheduler``
(the image installs this file under that name). It is redbeat's ``RedBeatScheduler``
(schedules live in Redis, as under ``make run``) that also touches ``RECSYS_BEAT_HEARTBEAT``
(default ``/tmp/recsys-beat-heartbeat``) on every tick. Beat ticks at least as often as its
most frequent entry (the callback scan, every 5 s), so a file older than a minute means beat
is stuck or lost Redis: ``--check`` exits 1 then, which is what the healthcheck runs
(``python -m recsys_beat_heartbeat --check``). Celery has no such probe for beat (``celery
inspect`` reaches workers only), hence this small file.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from redbeat import RedBeatScheduler

#: Seconds without a tick after which beat counts as unhealthy.
STALE_AFTER = 60.0


def heartbeat_path() -> Path:
    return Path(os.environ.get("RECSYS_BEAT_HEARTBEAT", "/tmp/recsys-beat-heartbeat"))  # noqa: S108


class HeartbeatScheduler(RedBeatScheduler):  # type: ignore[misc]
    """redbeat's scheduler (the service's, see shared/queue.py) plus a heartbeat file."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval: float = super().tick(*args, **kwargs)
        heartbeat_path().touch()
        return interval


def check(stale_after: float = STALE_AFTER) -> int:
    """0 when the heartbeat file is fresher than ``stale_after`` seconds, else 1."""
    try:
        age = time.time() - heartbeat_path().stat().st_mtime
    except FileNotFoundError:
        print("beat: no heartbeat yet", file=sys.stderr)
        return 1
    if age > stale_after:
        print(f"beat: last tick {age:.0f} s ago", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--check"]:
        sys.exit("usage: python -m recsys_beat_heartbeat --check")
    sys.exit(check())
