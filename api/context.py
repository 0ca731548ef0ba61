"""The per-app services (settings, Redis, storage, Celery client, runs) blueprints use."""

from __future__ import annotations

from typing import cast

from flask import current_app

from shared.runs.service import ProcessServices


class Services(ProcessServices):
    """Built once by :func:`api.app.create_app`; shared by every request of the process."""


def services() -> Services:
    """The current app's services."""
    return cast(Services, current_app.extensions["recsys"])
