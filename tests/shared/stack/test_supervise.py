"""The Procfile's worker supervisor restarts a crashed worker and stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from shared.stack.procs import stop_group


def test_a_command_that_dies_is_restarted_and_sigterm_stops_everything(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # the child records each start, dies at once the first time, then stays up
    child = (
        "import pathlib, sys, time\n"
        f"p = pathlib.Path({str(runs)!r})\n"
        "n = len(p.read_text().splitlines()) if p.exists() else 0\n"
        "p.write_text('run\\n' * (n + 1))\n"
        "sys.exit(1) if n == 0 else time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.stack.supervise", "--", sys.executable, "-c", child],
        start_new_session=True, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if runs.exists() and len(runs.read_text().splitlines()) >= 2:
                break
            time.sleep(0.1)
        assert runs.exists() and len(runs.read_text().splitlines()) == 2
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # to the supervisor only: it passes it on
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert proc.stderr is not None and b"restarting in 1 s" in proc.stderr.read()
    finally:
        stop_group(proc, signal.SIGKILL, timeout=5)


def test_no_command_is_a_usage_error() -> None:
    result = subprocess.run([sys.executable, "-m", "shared.stack.supervise"], capture_output=True)
    assert result.returncode == 2 and b"usage" in result.stderr
