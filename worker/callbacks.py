"""Callback delivery: the delivery task on the ``callbacks`` queue and the SSRF guard."""

from __future__ import annotations

from shared.contracts import TASK_SCAN_CALLBACKS
from worker.celery_app import app


@app.task(name=TASK_SCAN_CALLBACKS, ignore_result=True)
def scan_callbacks() -> None:
    """Send the webhook attempts that are due (placeholder)."""
