"""The runs service: the run lifecycle bound to the service's Redis, queue and settings.

API views, the runner and the reconciler hold one :class:`Runs` and pass a
:class:`~shared.runs.ref.RunRef` per run, instead of threading the client, the
producer, the settings and the tenant, model and version through every call.
The state changes themselves are functions in :mod:`shared.runs.lifecycle`
(start and middle) and :mod:`shared.runs.ending` (the end), unit-tested on
their own; this class only supplies what they need.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

import redis
from celery import Celery

from shared.config import Settings
from shared.contracts import Phase, RunStatus
from shared.errors import DependencyUnavailable, ServiceError
from shared.runs import ending, lifecycle, lock
from shared.runs.records import get_run, get_status
from shared.runs.ref import RunRef
from shared.storage import Storage

log = logging.getLogger(__name__)


class Runs:
    """Create, enqueue, start, report, cancel, requeue and end training runs."""

    def __init__(self, redis_client: redis.Redis, celery: Celery | None,
                 settings: Settings) -> None:
        self.redis = redis_client
        #: The producer; None where nothing may be enqueued (no callbacks scheduled then).
        self.celery = celery
        self.settings = settings

    # -- creation and enqueueing ------------------------------------------------------------

    def create(self, tenant: str, model_id: str, params: Mapping[str, Any],
               callback_url: str | None, now: datetime | None = None) -> RunRef:
        """Register a queued run with the next version; 409 when the model already trains."""
        status = lifecycle.create_run(self.redis, tenant, model_id, params, callback_url, now,
                                      settings=self.settings)
        return RunRef(tenant, model_id, status["version"])

    def enqueue(self, ref: RunRef, attempt: int) -> str:
        """Send the training task of the run's ``attempt``; returns the task id."""
        if self.celery is None:
            raise RuntimeError("this Runs service has no producer to enqueue with")
        return lifecycle.enqueue_run(self.redis, self.celery, self.settings, ref, attempt)

    def submit(self, tenant: str, model_id: str, params: Mapping[str, Any],
               callback_url: str | None) -> RunRef:
        """Create a run and enqueue its first attempt; 503 (run ended) when the broker is down."""
        ref = self.create(tenant, model_id, params, callback_url)
        self.send_or_end(ref, lambda: self.enqueue(ref, 1), "run")
        return ref

    def send_or_end(self, ref: RunRef, send: Callable[[], object], what: str) -> None:
        """Enqueue a just-created run with ``send``; when the broker is unreachable, end the
        run as failed (nothing will ever pick it up) and answer 503."""
        try:
            send()
        except ServiceError:
            raise
        except Exception as exc:  # kombu/redis errors of the broker connection
            log.warning("could not enqueue %s: %s", ref, exc)
            # no producer: the callback could not be enqueued either
            ending.finish_run(self.redis, None, ref, phase="failed",
                              message=f"The {what} could not be queued (the broker is "
                                      "unreachable); submit it again.")
            raise DependencyUnavailable(
                f"The task queue is unreachable; the {what} was not started. Try again "
                "shortly.", details={"dependency": "broker"},
            ) from exc

    # -- a worker's attempt -----------------------------------------------------------------

    def take_lock(self, ref: RunRef, owner: str) -> bool:
        """Take the model's training lock for ``owner``; False when another attempt holds it."""
        return lock.acquire_lock(self.redis, ref.tenant, ref.model_id, owner,
                                 self.settings.heartbeat_stale_after)

    def refresh_lock(self, ref: RunRef, owner: str) -> bool:
        """Keep the model's lock alive; False when it was lost."""
        return lock.refresh_lock(self.redis, ref.tenant, ref.model_id, owner,
                                 self.settings.heartbeat_stale_after)

    def release_lock(self, ref: RunRef, owner: str) -> None:
        """Give the model's lock back if ``owner`` still holds it."""
        lock.release_lock(self.redis, ref.tenant, ref.model_id, owner)

    def start(self, ref: RunRef, owner: str) -> dict[str, Any] | None:
        """Claim the run for an attempt; None when it ended or another attempt is alive."""
        return lifecycle.start_attempt(self.redis, ref, owner,
                                       self.settings.heartbeat_stale_after)

    def progress(self, ref: RunRef, owner: str, *, phase: Phase | None = None,
                 progress: int | None = None, message: str | None = None,
                 fields: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Write progress and heartbeat; None once ``owner`` no longer owns the run."""
        return lifecycle.update_run(self.redis, ref, owner, phase=phase, progress=progress,
                                    message=message, fields=fields)

    def cancel_requested(self, ref: RunRef) -> bool:
        """True once a cancel was asked for (or the run already ended elsewhere)."""
        return lifecycle.cancel_requested(self.redis, ref)

    # -- ending -----------------------------------------------------------------------------

    def finish(self, ref: RunRef, *, phase: Phase, message: str, owner: str | None = None,
               only_if_queued: bool = False,
               fields: Mapping[str, Any] | None = None) -> RunStatus | None:
        """End the run as ``error`` (see :func:`shared.runs.ending.finish_run`)."""
        return ending.finish_run(self.redis, self.celery, ref, phase=phase, message=message,
                                 owner=owner, only_if_queued=only_if_queued, fields=fields)

    def complete(self, ref: RunRef, *, owner: str, message: str,
                 model_fields: Mapping[str, str],
                 fields: Mapping[str, Any] | None = None) -> tuple[RunStatus | None, list[int]]:
        """Complete the run and serve its version; (status or None, versions dropped)."""
        return ending.complete_run(self.redis, self.celery, ref, owner=owner,
                                   keep_versions=self.settings.keep_versions,
                                   message=message, model_fields=model_fields, fields=fields)

    def request_cancel(self, tenant: str, model_id: str) -> tuple[RunStatus, bool]:
        """Cancel the model's queued or running run; (status, ended now)."""
        return ending.request_cancel(self.redis, self.celery, tenant, model_id)

    # -- the reconciler's view --------------------------------------------------------------

    def active(self) -> list[str]:
        """Members of every run not yet ended, across tenants."""
        return lifecycle.active_runs(self.redis)

    def forget(self, member: str) -> None:
        """Drop a member from the active set."""
        lifecycle.forget_active(self.redis, member)

    def requeue(self, ref: RunRef, message: str) -> dict[str, Any] | None:
        """Put a run whose worker vanished back to ``queued``; frees the model's lock."""
        return lifecycle.requeue_run(self.redis, ref, message)

    # -- reads and removal ------------------------------------------------------------------

    def record(self, ref: RunRef) -> dict[str, Any] | None:
        """The decoded run record, or None."""
        return get_run(self.redis, ref.tenant, ref.model_id, ref.version)

    def status(self, ref: RunRef) -> RunStatus:
        """The run's status object; NotFound when there is none."""
        return get_status(self.redis, ref.tenant, ref.model_id, ref.version)

    def delete_model(self, tenant: str, model_id: str) -> dict[str, Any]:
        """Remove a model and its runs from the registry; 409 while it trains."""
        return lifecycle.delete_model(self.redis, tenant, model_id)


@dataclass(frozen=True)
class ProcessServices:
    """What a process builds once and its requests or tasks share: settings, Redis,
    storage, the Celery app (worker) or producer (API), and the runs service on them."""

    settings: Settings
    redis: redis.Redis
    storage: Storage
    celery: Celery

    @cached_property
    def runs(self) -> Runs:
        """The run lifecycle on this process's Redis, producer and settings."""
        return Runs(self.redis, self.celery, self.settings)
