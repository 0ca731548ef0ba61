"""Keep one worker command running under ``make run``: restart it when it dies.

systemd (``Restart=``) and compose (``restart:``) restart a crashed worker in a
deployment; honcho, which runs the Procfile for ``make run``, does not: when one
process exits it stops all the others. A Celery worker can die on its own, for
example kombu's Redis transport raising on connection loss while a late-acked
task is still running (celery#9250), so without this one Redis blip during
training stops the whole local stack. The run itself is recovered by the
reconciler once a worker consumes again.

Usage: ``python -m shared.stack.supervise -- celery -A worker.celery_app worker ...``.
SIGTERM or SIGINT is passed to the command and ends supervision; any other exit
of the command restarts it after a growing pause (1 s, doubling, at most 30 s;
back to 1 s after it ran for a minute).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import FrameType

#: A command that ran this long before dying is restarted after the shortest pause again.
HEALTHY_AFTER = 60.0
MAX_PAUSE = 30.0


def supervise(command: list[str]) -> int:
    """Run ``command`` until a stop signal; restart it whenever it exits on its own."""
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def _stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    pause = 1.0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command)
        code = child.wait()
        if stopping:
            return max(code, 0)  # ended by the signal we passed on: a clean stop
        if time.monotonic() - started > HEALTHY_AFTER:
            pause = 1.0
        print(
            f"[recsys] {command[0]} exited with {code}; restarting in {pause:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        deadline = time.monotonic() + pause
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
        if stopping:
            return code
        pause = min(pause * 2, MAX_PAUSE)


def main() -> int:
    """Entry point: everything after ``--`` is the command."""
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m shared.stack.supervise -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    return supervise(args)


if __name__ == "__main__":
    sys.exit(main())
