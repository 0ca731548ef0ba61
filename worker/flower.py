"""What Flower shows of training, and what its buttons do to a run.

Flower is the operators' view of the queue (docs/operations.md). Three things
make it useful for training rather than noise:

- Housekeeping stays out of its task list: the periodic scans (callback scan
  every 5 s, reconciler) send no task events, and beat publishes no
  ``task-sent`` events, so a training task is never pushed off the first page.
- A running training task reports its phase and progress as a ``task-progress``
  event whose ``result`` field reads like the status (``training 42%: ...``);
  Flower shows a custom event's fields on the task and its state as PROGRESS.
- Revoking a training task, with or without *Terminate*, ends its run exactly as
  ``POST /train/<model_id>/cancel`` would: status ``error``, phase ``cancelled``,
  the callback scheduled, and the model's lock freed. The run is final, so the
  reconciler never queues it again.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from shared.contracts import TASK_TRAIN, ProgressMeta
from shared.runs.ref import RunRef
from worker.context import worker_services

log = logging.getLogger(__name__)

#: Custom event type Flower shows as the task's state (``PROGRESS``).
PROGRESS_EVENT = "task-progress"


def progress_text(meta: ProgressMeta) -> str:
    """One line for Flower's result column: phase, percent and the status message."""
    return f"{meta['phase']} {meta['progress']}%: {meta['message']}"


def send_progress(task: Task, meta: ProgressMeta) -> None:
    """Tell event consumers (Flower) the run's phase and progress; never fails the run."""
    try:
        task.send_event(PROGRESS_EVENT, result=progress_text(meta))
    except Exception:  # events are best effort: a broker blip must not stop training
        log.debug("progress event not sent", exc_info=True)


def no_sent_events_from_beat(sender: Any = None, **_: Any) -> None:
    """``beat_init`` handler: beat publishes only housekeeping, which Flower need not list."""
    app = getattr(sender, "app", None)
    if app is not None:
        app.conf.task_send_sent_event = False


def _run_ref(request: Any) -> RunRef | None:
    args = list(getattr(request, "args", None) or ())
    kwargs = dict(getattr(request, "kwargs", None) or {})
    names = ("tenant", "model_id", "version")
    values = {**dict(zip(names, args, strict=False)), **kwargs}
    try:
        return RunRef(str(values["tenant"]), str(values["model_id"]), int(values["version"]))
    except (KeyError, TypeError, ValueError):
        return None


def cancel_revoked_run(app: Celery, request: Any, *, terminated: bool, expired: bool) -> bool:
    """End the run of a revoked training task as cancelled; False when nothing was ended."""
    ref = _run_ref(request)
    if ref is None:
        return False
    runs = worker_services(app).runs
    record = runs.record(ref)
    if record is None:
        return False
    how = "terminated" if terminated else "expired" if expired else "revoked"
    ended = runs.finish(ref, phase="cancelled",
                        message=f"Cancelled: its training task was {how} through the workers' "
                                "remote control (Flower or `celery control`).")
    owner = str(record.get("owner") or "")
    if owner:
        runs.release_lock(ref, owner)
    if ended is not None:
        log.info("run %s cancelled: task %s", ref, how)
    return ended is not None


def on_task_revoked(sender: Any = None, request: Any = None, terminated: bool = False,
                    expired: bool = False, **_: Any) -> None:
    """``task_revoked`` handler (the worker's main process) for training tasks."""
    if getattr(sender, "name", None) != TASK_TRAIN or request is None:
        return
    try:
        cancel_revoked_run(sender.app, request, terminated=bool(terminated),
                           expired=bool(expired))
    except Exception:  # a signal handler must not take the worker down
        log.exception("could not cancel the run of a revoked task")
