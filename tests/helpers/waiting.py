"""Waiting on conditions instead of sleeping: until something happens, or while nothing may.

A fixed sleep before "nothing more happened" proves little on a loaded machine (the system
may not have had its chance yet) and wastes time on an idle one. ``holds_until`` asserts a
check on every poll until a condition shows the system had its chance; ``stays_true``
asserts a check continuously over a window (issue #14 accepts either).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(probe: Callable[[], T | None], timeout: float = 20.0, what: str = "",
               interval: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or probe}")
        time.sleep(interval)


def holds_until(check: Callable[[], bool], done: Callable[[], object], timeout: float = 30.0,
                what: str = "", interval: float = 0.05) -> None:
    """Assert ``check`` on every poll until ``done`` is truthy, and once more after."""
    deadline = time.monotonic() + timeout
    while True:
        assert check(), f"no longer true: {what or check}"
        if done():
            break
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {done}")
        time.sleep(interval)
    assert check(), f"no longer true: {what or check}"


def stays_true(check: Callable[[], bool], window: float, what: str = "",
               interval: float = 0.05) -> None:
    """Assert ``check`` on every poll for ``window`` seconds (and at both ends)."""
    end = time.monotonic() + window
    holds_until(check, lambda: time.monotonic() >= end, timeout=window + 1, what=what,
                interval=interval)


def log_count(path: Path, *texts: str) -> int:
    """How many times any of ``texts`` occurs in the file at ``path`` (0 if it is missing)."""
    try:
        content = path.read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return sum(content.count(text) for text in texts)
