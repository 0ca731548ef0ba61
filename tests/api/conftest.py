"""Fixtures for the API tests: the queue replaced by a recorder (no broker)."""

from __future__ import annotations

import pytest

from shared.runs.ref import RunRef
from shared.runs.service import Runs


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[RunRef]:
    """The runs the API enqueued, in order (``Runs.enqueue`` records instead of sending)."""
    calls: list[RunRef] = []

    def fake_enqueue(runs: Runs, ref: RunRef, attempt: int) -> str:
        calls.append(ref)
        return "task"

    monkeypatch.setattr(Runs, "enqueue", fake_enqueue)
    return calls
