"""Keep a worker or beat running under ``make run``: restart it when it dies.

systemd (``Restart=``) and compose (``restart:``) restart a crashed worker in a
deployment; honcho, which runs the Procfile for ``make run``, does not: when one
process exits it stops all the others. A Celery worker can die on its own, for
example kombu's Redis transport raising on connection loss while a late-acked
task is still running (celery#9250), so without this one Redis blip during
training stops the whole local stack. The run itself is recovered by the
reconciler once a worker consumes again. Beat is restarted too: celery-redbeat
retries its Redis calls through a Redis restart, but not those of its lock,
so a restart that catches beat extending its lock ends beat (redbeat#314);
the new beat takes the lock once the old one's expires.

Usage: ``python -m shared.stack.supervise -- celery -A worker.celery_app worker ...``.
SIGTERM or SIGINT is passed to the command and ends supervision; any other exit
of the command restarts it after a growing pause (1 s, doubling, at most 30 s;
back to 1 s after it ran for a minute). With ``--once`` it is never restarted
(the Procfile's other lines): the wrapper then only ties the command to the
launcher, stopping it when ``RECSYS_LAUNCHER_PID`` is gone, so that nothing
outlives ``make run`` even if honcho itself is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from shared.stack.procs import Signals

#: A command that ran this long before dying is restarted after the shortest pause again.
HEALTHY_AFTER = 60.0
MAX_PAUSE = 30.0
#: Seconds the command gets after the launcher vanished before it is killed.
ORPHAN_GRACE = 5.0


def _launcher_gone() -> bool:
    """True when ``make run``'s launcher (``RECSYS_LAUNCHER_PID``) no longer runs."""
    raw = os.environ.get("RECSYS_LAUNCHER_PID", "")
    if not raw.isdigit():
        return False
    try:
        os.kill(int(raw), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _end(child: subprocess.Popen[bytes], sig: int) -> int:
    """Pass ``sig`` on and wait for the command; SIGKILL it after :data:`ORPHAN_GRACE`."""
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(sig)
    try:
        return child.wait(timeout=ORPHAN_GRACE)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()


def supervise(command: list[str], restart: bool = True) -> int:
    """Run ``command`` until a stop signal; restart it whenever it exits on its own.

    The signal handler only records the signal (see :class:`shared.stack.procs.Signals`);
    this loop passes it on. It also ends the command when the launcher that started
    the stack is gone (killed outright), so nothing outlives ``make run``.
    """
    signals = Signals()
    pause = 1.0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command)
        while child.poll() is None:
            if signals.wait(0.5):
                return max(_end(child, signals.received or signal.SIGTERM), 0)
            if _launcher_gone():
                print("[recsys] the launcher is gone; stopping", file=sys.stderr, flush=True)
                code = _end(child, signal.SIGTERM)
                # and whatever the command started (its group is ours: honcho's line)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    os.killpg(os.getpgrp(), signal.SIGTERM)
                return code
        code = int(child.returncode)
        if not restart:
            return code
        if time.monotonic() - started > HEALTHY_AFTER:
            pause = 1.0
        print(
            f"[recsys] {command[0]} exited with {code}; restarting in {pause:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        if signals.wait(pause):
            return code
        pause = min(pause * 2, MAX_PAUSE)


def main() -> int:
    """Entry point: everything after ``--`` is the command; ``--once`` never restarts it."""
    args = sys.argv[1:]
    restart = True
    if args[:1] == ["--once"]:
        restart, args = False, args[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m shared.stack.supervise [--once] -- COMMAND [ARGS...]",
              file=sys.stderr)
        return 2
    return supervise(args, restart)


if __name__ == "__main__":
    sys.exit(main())
