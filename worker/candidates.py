"""The two evaluation fits of ``use_metadata_features: "auto"`` as two tasks.

The run (:mod:`worker.runner`) fits the candidate *with* metadata itself and
offers the one *without* to any free worker as a ``recsys.train_candidate``
task (:func:`help_run`). Whoever fits a candidate first claims it in Redis
with ``SET NX`` (a lease, refreshed every heartbeat interval while the fit
runs), so it is never fitted twice:

- a free worker claims it, loads the same data, fits, and writes the
  :class:`~worker.selection.CandidateResult` as JSON (never a pickle) beside the
  claim, then pushes to a list the run blocks on;
- when the run finishes its own candidate and nobody has claimed the other
  (no free worker, or the tenant's slots are all held), the run claims it and
  fits it itself, as it did before: with one worker a run never waits on a
  task that cannot start (no ``.get()`` inside a task);
- when the helper's lease runs out (its worker was lost), the run claims the
  candidate and fits it itself; an error in the helper's fit (a diverged
  model) ends the run with that error.

The keys carry the attempt's owner token: a run requeued after its worker
was lost starts from scratch, and a helper whose attempt is over (cancelled,
ended, taken over) stops at its next epoch. The helper takes one of the
tenant's training slots (:mod:`shared.runs.slots`) like any training task;
with none free it skips and the run fits the candidate itself.

The run offers the candidate only when its host has the cores to run both
fits at once (:func:`worth_offering`: at least twice the training threads);
on fewer, a second worker's fit would only share the run's cores, so the run
fits both itself, at once, each with half its threads
(:func:`worker.choice.choose`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any, cast

import redis
from celery import Celery

from shared.contracts import QUEUE_TRAIN, CurvePoint, Metrics
from shared.data.assembly import build_dataset, dataset_options
from shared.data.selection import DataSpec, select_data
from shared.errors import ServiceError, TrainingFailed
from shared.registry import tenant_key
from shared.runs.records import FINAL_STATES
from shared.runs.ref import RunRef
from worker.context import WorkerServices
from worker.evaluation import holdout_split
from worker.fitting import CancelHook, TrainingCancelled
from worker.params import train_params
from worker.selection import CandidateResult, evaluation_fit, worker_name
from worker.warm_start import from_parent

log = logging.getLogger(__name__)

#: The task that fits the candidate without metadata features for a run.
TASK_TRAIN_CANDIDATE = "recsys.train_candidate"
#: Seconds the finished result stays readable (the run reads it within seconds).
RESULT_TTL = 3600


def worth_offering(threads: int) -> bool:
    """Whether this host's cores can run the two candidate fits at once at full speed.

    Two fits of ``threads`` threads each on fewer than ``2 * threads`` cores only
    share them: the run takes no less time than fitting both itself at once
    with half its threads each (and longer: the helper loads the data again),
    so the candidate is then not offered.
    """
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    return cores >= 2 * threads


class Share:
    """The Redis side of one attempt's offered candidate: claim, progress, result."""

    def __init__(self, r: redis.Redis, ref: RunRef, attempt: str, lease: float) -> None:
        self.r, self.ref, self.attempt, self.lease = r, ref, attempt, lease
        self._stop = threading.Event()

    def key(self, part: str) -> str:
        """``<tenant>:train:candidate:<model>:<version>:<attempt>:<part>``."""
        return tenant_key(self.ref.tenant, "train", "candidate", self.ref.model_id,
                          str(self.ref.version), self.attempt, part)

    def claim(self, who: str) -> bool:
        """Take the candidate for ``who``; False when someone already has it."""
        return bool(self.r.set(self.key("claim"), who, nx=True, px=int(self.lease * 1000)))

    def claimed(self) -> bool:
        """Whether a fitter holds the candidate (its lease not run out)."""
        return bool(self.r.exists(self.key("claim")))

    def keep_claim(self, who: str, interval: float) -> threading.Thread:
        """Refresh the lease every ``interval`` seconds until :meth:`stop`."""
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    if self.r.get(self.key("claim")) in (who, who.encode()):
                        self.r.pexpire(self.key("claim"), int(self.lease * 1000))
                except redis.RedisError:
                    log.warning("could not refresh the claim of %s; retrying", self.ref)
        thread = threading.Thread(target=loop, name="candidate-lease", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop refreshing the lease."""
        self._stop.set()

    def set_fraction(self, fraction: float) -> None:
        """The helper's progress (0-1), for the run's status."""
        self.r.set(self.key("progress"), f"{fraction:.4f}", ex=RESULT_TTL)

    def fraction(self) -> float:
        """The helper's progress (0-1); 0 while unknown."""
        raw = cast("bytes | str | None", self.r.get(self.key("progress")))
        return float(raw) if raw else 0.0

    def put(self, outcome: dict[str, Any]) -> None:
        """Publish the result (or error) and wake the run."""
        with self.r.pipeline() as pipe:
            pipe.set(self.key("result"), json.dumps(outcome), ex=RESULT_TTL)
            pipe.rpush(self.key("done"), "1")
            pipe.expire(self.key("done"), RESULT_TTL)
            pipe.execute()

    def outcome(self, timeout: float) -> dict[str, Any] | None:
        """The published outcome, waiting at most ``timeout`` seconds for it."""
        raw = cast("bytes | str | None", self.r.get(self.key("result")))
        if raw is None and self.r.blpop([self.key("done")], timeout=max(1, round(timeout))):
            raw = cast("bytes | str | None", self.r.get(self.key("result")))
        return None if raw is None else cast(dict[str, Any], json.loads(raw))

    def cleanup(self) -> None:
        """Drop every key of the attempt's candidate."""
        self.r.delete(*(self.key(part) for part in ("claim", "progress", "result", "done")))


def result_json(result: CandidateResult, data_hash: str) -> dict[str, Any]:
    """A candidate's result as JSON, with the hash of the data it was fitted on.

    Its representations stay in the process (``reprs``): the helper sends its
    metrics instead, computed in full in case its candidate wins.
    """
    fields = asdict(replace(result, reprs=None))
    del fields["reprs"]
    return {"result": fields, "data_hash": data_hash}


def result_from_json(raw: dict[str, Any]) -> CandidateResult:
    """The inverse of :func:`result_json` (without the hash)."""
    fields = dict(raw["result"])
    fields["curve"] = [cast(CurvePoint, dict(p)) for p in fields["curve"]]
    fields["metrics"] = (None if fields["metrics"] is None
                         else cast(Metrics, dict(fields["metrics"])))
    return CandidateResult(**fields)


class Offer:
    """The run's side: offer the candidate, then take it back or collect it.

    Implements :class:`worker.choice.Offload`.
    """

    def __init__(self, svc: WorkerServices, ref: RunRef, attempt: str,
                 should_cancel: CancelHook) -> None:
        settings = svc.settings
        self.svc, self.ref, self.attempt, self.should_cancel = svc, ref, attempt, should_cancel
        self.share = Share(svc.redis, ref, attempt, settings.heartbeat_stale_after)
        self.interval = settings.heartbeat_interval

    def offer(self) -> None:
        """Send the helper task (a broker error only means the run fits both itself)."""
        celery: Celery = self.svc.celery
        try:
            celery.send_task(TASK_TRAIN_CANDIDATE, queue=QUEUE_TRAIN, args=[
                self.ref.tenant, self.ref.model_id, self.ref.version, self.attempt])
        except Exception:  # the run can always fit the candidate itself
            log.warning("could not offer the second candidate of %s; fitting it here",
                        self.ref, exc_info=True)

    def fraction(self) -> float:
        """The helper's progress, 0 when nobody fits the candidate or Redis hiccups."""
        try:
            return self.share.fraction()
        except redis.RedisError:
            return 0.0

    def take(self) -> bool:
        """Claim the candidate for the run itself; False when a helper has it."""
        return self.share.claim(f"run:{worker_name()}")

    def collect(self, data_hash: str, on_wait: CancelHook) -> CandidateResult | None:
        """The helper's result; None when the run must fit the candidate itself.

        Waits while the helper's lease is alive; ``on_wait`` is called each
        heartbeat interval (progress) and cancels the wait when True.
        """
        while True:
            if self.should_cancel() or on_wait():
                raise TrainingCancelled("Cancelled on request.")
            outcome = self.share.outcome(self.interval)
            if outcome is not None:
                return self._settled(outcome, data_hash)
            if not self.share.claimed() and self.take():
                log.warning("the helper fitting a candidate of %s was lost; fitting it here",
                            self.ref)
                return None

    def _settled(self, outcome: dict[str, Any], data_hash: str) -> CandidateResult | None:
        if "error" in outcome:
            raise TrainingFailed(str(outcome["error"]), code=str(outcome.get("code", "")))
        if outcome.get("data_hash") != data_hash:  # the data changed between the loads
            log.warning("the helper of %s saw other data; fitting the candidate here", self.ref)
            return None
        return result_from_json(outcome)

    def close(self) -> None:
        """Forget the attempt's keys (a helper still fitting stops at its next epoch)."""
        try:
            self.share.cleanup()
        except redis.RedisError:
            log.warning("could not clean the candidate keys of %s; they expire", self.ref)


def _over(record: dict[str, Any] | None, attempt: str) -> bool:
    """Whether ``attempt`` no longer owns a live run (ended, requeued, or cancelling)."""
    return (record is None or record["status"] in FINAL_STATES
            or record.get("owner") != attempt or bool(record.get("cancel_requested")))


def _attempt_over(svc: WorkerServices, ref: RunRef, attempt: str) -> bool:
    return _over(svc.runs.record(ref), attempt)


def help_run(svc: WorkerServices, ref: RunRef, attempt: str) -> dict[str, Any]:
    """The helper task's work: claim, load the run's data, fit without metadata, publish."""
    share = Share(svc.redis, ref, attempt, svc.settings.heartbeat_stale_after)
    record = svc.runs.record(ref)
    if record is None or _over(record, attempt):
        return {"outcome": "skipped", "reason": "the attempt is over"}
    who = worker_name()
    if not share.claim(who):
        return {"outcome": "skipped", "reason": "claimed"}
    share.keep_claim(who, svc.settings.heartbeat_interval)
    try:
        result, data_hash = _fit(svc, ref, attempt, record, share)
        share.put(result_json(result, data_hash))
        return {"outcome": "completed", "worker": who, "seconds": round(result.seconds, 3)}
    except TrainingCancelled:
        return {"outcome": "cancelled"}
    except ServiceError as exc:
        share.put({"error": exc.message, "code": exc.code})
        return {"outcome": "error", "reason": exc.code}
    except Exception as exc:  # a defect: the run ends clearly instead of waiting
        log.exception("the candidate fit of %s crashed", ref)
        share.put({"error": f"Training stopped on an internal error ({type(exc).__name__}) "
                            "in a candidate fit; it has been logged by the worker. Retrying "
                            "may help; if not, report it.", "code": "internal"})
        return {"outcome": "error", "reason": type(exc).__name__}
    finally:
        share.stop()


def _fit(svc: WorkerServices, ref: RunRef, attempt: str, record: dict[str, Any],
         share: Share) -> tuple[CandidateResult, str]:
    params: dict[str, Any] = record.get("params") or {}
    started = str(record.get("start_timestamp") or "")
    now = datetime.fromisoformat(started.replace("Z", "+00:00")).astimezone(UTC)
    selected = select_data(svc.storage, svc.redis, ref.tenant, DataSpec.from_request(params),
                           now, count_implied=False)
    dataset = build_dataset(selected.entities, selected.interactions, dataset_options(params))
    del selected
    tp = train_params(params, svc.settings.train_threads)
    test_mask = holdout_split(dataset, tp.evaluation.holdout)
    start = from_parent(svc.storage, ref, params, tp.hyperparameters)
    max_epochs = tp.max_epochs if tp.epochs_auto else tp.hyperparameters.epochs

    def on_epoch(epoch: int) -> None:
        share.set_fraction(epoch / max_epochs)

    result = evaluation_fit(dataset.without_metadata(), tp, test_mask, max_epochs,
                            tp.epochs_auto, on_epoch,
                            lambda: _attempt_over(svc, ref, attempt), start)
    return result, dataset.data_hash()
