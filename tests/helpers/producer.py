"""A stand-in for the API's Celery producer that records the tasks it is asked to send."""

from __future__ import annotations

from typing import Any


class SentTasks:
    """The API's producer, recording ``(task name, kwargs)`` instead of publishing."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_task(self, name: str, kwargs: dict[str, Any], **_: Any) -> None:
        self.sent.append((name, kwargs))
