"""Watching a training run: a live rich progress bar fed by polling ``GET /status``.

Shared by ``recsys train --wait`` and the demo. The bar shows the model, the
phase, the percent, the time spent and rich's estimate of the time left (from
the recent rate of progress). Each phase change is also printed as a line, so
a log or a non-terminal output still tells the story.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from shared.client.http import ApiError, ConnectionFailed, RecsysClient

#: Seconds between two polls of the status (60 a minute, well inside the rate limit).
POLL_INTERVAL = 1.0
#: Seconds of consecutive unreachable/503 answers tolerated while waiting (a restart, say).
OUTAGE_GRACE = 30.0
FINAL_STATES = {"completed", "error"}


def _transient(exc: Exception) -> bool:
    """Worth waiting out: unreachable, 503 (a restart), 429 (rate limited)."""
    return isinstance(exc, ConnectionFailed) or (
        isinstance(exc, ApiError) and exc.status in {429, 503}
    )


def wait_for_run(
    client: RecsysClient,
    model_id: str,
    console: Console,
    *,
    poll_interval: float = POLL_INTERVAL,
    timeout: float | None = None,
    first: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Poll until the run completes or fails; return its final status object."""
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[model]}[/] {task.description:<13}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    started = time.monotonic()
    status = first
    last_phase: str | None = None
    failing_since: float | None = None
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("queued", total=100, model=model_id)
        while True:
            if status is None:
                try:
                    status = client.status(model_id)
                    failing_since = None
                except (ApiError, ConnectionFailed) as exc:
                    if not _transient(exc):
                        raise
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if now - failing_since > OUTAGE_GRACE:
                        raise
                    asked = exc.retry_after if isinstance(exc, ApiError) else None
                    time.sleep(min(max(poll_interval, asked or 0.0), OUTAGE_GRACE))
                    continue
            phase = str(status.get("phase") or status.get("status") or "?")
            progress = int(status.get("progress") or 0)
            if phase != last_phase:
                bar.console.print(f"  {phase}: {status.get('message') or ''}".rstrip(": "))
                last_phase = phase
            bar.update(task, completed=progress, description=phase)
            if status.get("status") in FINAL_STATES:
                return status
            if timeout is not None and time.monotonic() - started > timeout:
                raise TimeoutError(f"model {model_id} still {phase} after {timeout:.0f} s")
            time.sleep(poll_interval)
            status = None
