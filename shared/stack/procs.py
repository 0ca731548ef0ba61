"""Child processes of the stack: stopping process groups, and finding every descendant.

:func:`descendants` reads ``/proc`` directly (Linux, like the prctl calls of the
launcher): psutil would do it too, but it is not a dependency and this is one
small loop over ``/proc/<pid>/stat``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
from dataclasses import dataclass
from types import FrameType

#: prctl(2) option: orphaned descendants are re-parented to this process, not to init.
PR_SET_CHILD_SUBREAPER = 36


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


def become_subreaper() -> bool:
    """Adopt orphaned descendants (so none escapes :func:`descendants`); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True)
class Proc:
    """One process as ``/proc/<pid>/stat`` shows it."""

    pid: int
    ppid: int
    pgid: int
    zombie: bool


def _read_stat(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode(errors="replace")
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
    fields = raw[raw.rindex(")") + 2 :].split()
    return Proc(pid, int(fields[1]), int(fields[2]), fields[0] in {"Z", "X"})


def descendants(root: int) -> list[Proc]:
    """Every live or zombie process below ``root`` (children, grandchildren, ...)."""
    procs = [p for p in (_read_stat(int(n)) for n in os.listdir("/proc") if n.isdigit()) if p]
    children: dict[int, list[Proc]] = {}
    for proc in procs:
        children.setdefault(proc.ppid, []).append(proc)
    found: list[Proc] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def signal_groups(pgids: set[int], sig: int) -> None:
    """Send ``sig`` to each process group (gone ones are skipped)."""
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def reap(pids: set[int]) -> None:
    """Collect the exit status of ended children among ``pids`` (adopted orphans)."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


class Signals:
    """SIGINT/SIGTERM only record the signal and wake :meth:`wait`; nothing else runs in them."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._read_fd, write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd)  # written by the C-level handler: no Python, no locks
        signal.signal(signal.SIGINT, self._record)
        signal.signal(signal.SIGTERM, self._record)

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` s or until a signal arrives; True once one was received."""
        if self.received is None:
            try:
                ready, _, _ = select.select([self._read_fd], [], [], timeout)
            except InterruptedError:  # pragma: no cover - select retries since PEP 475
                ready = []
            if ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._read_fd, 512)
        return self.received is not None
