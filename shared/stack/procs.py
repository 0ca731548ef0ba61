"""Stopping child processes that run in their own process group (stacks, servers, workers)."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0
) -> int:
    """Send ``sig`` to ``proc``'s process group, wait, and SIGKILL the group if it lingers.

    ``proc`` must have been started with ``start_new_session=True``. Returns its exit code.
    """
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            proc.wait(timeout=10)
    return int(proc.returncode)
