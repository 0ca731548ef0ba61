"""The search's tasks' work: start it, run one trial, and the beat-driven check.

Why no chord: a chord's callback runs when every header task has a result in
the backend. A trial whose whole worker died (SIGKILL, a lost host) keeps its
message unacknowledged until the broker's visibility timeout, hours away, so a
chord would wait that long; and one failed header makes the callback fail with
a ``ChordError``. Instead the trials report into the run record
(:mod:`shared.runs.tuning`), and the trial whose result ends the search queues
the final fit in that same transaction ("last one out"). The periodic
:func:`check` (beat, every ``reconcile_interval``) ends trials whose heartbeat
went stale as failed, which may end the search the same way. Nothing ever waits
on a worker: the parent task only enqueues, and returns.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from shared.contracts import QUEUE_TRAIN, TASK_TUNE_TRIAL
from shared.data.assembly import Dataset, build_dataset, dataset_options
from shared.data.selection import DataSpec, select_data
from shared.errors import ServiceError
from shared.runs import tuning
from shared.runs.records import now_iso
from shared.runs.ref import RunRef
from shared.runs.search import default_trial
from worker.context import WorkerServices
from worker.fitting import TrainingCancelled
from worker.params import train_params
from worker.runner import explain_empty
from worker.tuning import study
from worker.tuning.space import suggest
from worker.tuning.trial import run_trial

log = logging.getLogger(__name__)

#: The dataset of the last trial this process ran: trials of one search on one worker
#: process reuse it (key: run, data moment, metadata features on or off).
_dataset_cache: dict[tuple[str, str, bool], Dataset] = {}


def enqueue_trials(svc: WorkerServices, ref: RunRef, indices: list[int]) -> None:
    """Send trial tasks, each with its own time limits, on the training queue."""
    for index in indices:
        svc.celery.send_task(
            TASK_TUNE_TRIAL,
            kwargs={"tenant": ref.tenant, "model_id": ref.model_id, "version": ref.version,
                    "trial": index},
            queue=QUEUE_TRAIN,
            task_id=f"trial-{ref.tenant}-{ref.model_id}-v{ref.version}-t{index}-"
                    f"{uuid.uuid4().hex[:8]}",
            soft_time_limit=svc.settings.train_soft_time_limit,
            time_limit=svc.settings.train_hard_time_limit,
        )


def start_search(svc: WorkerServices, ref: RunRef) -> dict[str, Any]:
    """The parent task: claim the run, create the study, enqueue the first trials, return."""
    record = svc.runs.record(ref)
    if record is None:
        return {"outcome": "skipped", "reason": "no such run"}
    params = record.get("params") or {}
    search = params["search"]
    # the study first: a duplicate delivery finds it and skips, and no trial asks before it
    study.create_study(svc.redis, ref, default_trial(search["space"], params))
    first = tuning.begin(svc.redis, ref, uuid.uuid4().hex)
    if first is None:
        return {"outcome": "skipped", "reason": "started already, or ended"}
    if not first:  # cancelled before it started: every trial ends cancelled, and the run
        follow_up(svc, ref, tuning.mark_lost(svc.redis, ref, svc.settings.heartbeat_stale_after))
        return {"outcome": "cancelled"}
    enqueue_trials(svc, ref, first)
    log.info("tuning %s: %d trials, %d enqueued", ref, search["trials"], len(first))
    return {"outcome": "tuning", "enqueued": len(first)}


def follow_up(svc: WorkerServices, ref: RunRef, follow: tuning.Followup) -> None:
    """Enqueue the trials that now fit, and act on the end of the search."""
    enqueue_trials(svc, ref, follow.enqueue)
    if follow.lost_numbers:
        study.tell_failed(svc.redis, ref, follow.lost_numbers)
    if follow.ended is None:
        return
    record = svc.runs.record(ref) or {}
    if follow.ended == "final_fit":
        svc.runs.enqueue(ref, int(record.get("attempts") or 1) + 1)
    else:
        svc.runs.finish(ref, phase="cancelled" if follow.ended == "cancelled" else "failed",
                        message=follow.message)
    study.drop_study(svc.redis, ref)
    log.info("tuning %s: search ended (%s)", ref, follow.ended)


def _dataset(svc: WorkerServices, ref: RunRef, record: dict[str, Any],
             params: dict[str, Any]) -> Dataset:
    """The run's data as of its start, with or without metadata features (cached)."""
    started = record.get("start_timestamp") or now_iso()
    options = dataset_options(params)
    if not isinstance(options.use_metadata_features, bool):  # "auto" outside the space: keep
        options = dataclasses.replace(options, use_metadata_features=True)
    key = (ref.key, started, bool(options.use_metadata_features))
    if key not in _dataset_cache:
        _dataset_cache.clear()
        now = datetime.fromisoformat(started.replace("Z", "+00:00")).astimezone(UTC)
        spec = DataSpec.from_request(params)
        selected = select_data(svc.storage, svc.redis, ref.tenant, spec, now,
                               count_implied=False)
        if selected.interactions.num_rows == 0:
            from shared.data.assembly import EmptyData

            raise EmptyData(explain_empty(svc, ref.tenant, spec, now))
        _dataset_cache[key] = build_dataset(selected.entities, selected.interactions, options)
    return _dataset_cache[key]


class TrialBeat:
    """Keeps a running trial's heartbeat fresh; ``lost`` once the search ended it."""

    def __init__(self, svc: WorkerServices, ref: RunRef, index: int, token: str) -> None:
        self.svc, self.ref, self.index, self.token = svc, ref, index, token
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="trial-heartbeat", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.svc.settings.heartbeat_interval):
            try:
                if not tuning.beat(self.svc.redis, self.ref, self.index, self.token):
                    self.lost = True
            except ServiceError:
                log.warning("heartbeat of trial %d of %s failed; retrying", self.index, self.ref)

    def should_stop(self) -> bool:
        """True once the trial was ended elsewhere or the run's cancel was asked for."""
        return self.lost or self.svc.runs.cancel_requested(self.ref)

    def __enter__(self) -> TrialBeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def execute_trial(svc: WorkerServices, ref: RunRef, index: int, worker: str) -> dict[str, Any]:
    """One trial task: claim it, ask the study, fit and score, tell and record; what next."""
    token = uuid.uuid4().hex
    claimed = tuning.claim(svc.redis, ref, index, token, worker)
    if claimed == "skip":
        return {"outcome": "skipped"}
    if claimed == "cancelled":
        follow_up(svc, ref, tuning.record(svc.redis, ref, index, token, state="cancelled"))
        return {"outcome": "cancelled"}
    record = svc.runs.record(ref) or {}
    params = dict(record.get("params") or {})
    search = params["search"]
    outcome: dict[str, Any] = {"state": "failed", "message": None}
    chosen: dict[str, Any] | None = None
    asked = None
    started = time.perf_counter()
    with TrialBeat(svc, ref, index, token) as beat:
        try:
            optuna_study = study.load_study(svc.redis, ref, search["trials"], index)
            asked = optuna_study.ask()
            chosen = suggest(asked, search["space"])
            tuning.note_trial(svc.redis, ref, index, token, chosen, asked.number)
            outcome = _fit_trial(svc, ref, record, params, chosen, beat)
        except TrainingCancelled:
            outcome = {"state": "cancelled", "message": "Cancelled on request."}
        except SoftTimeLimitExceeded:
            outcome["message"] = (f"The trial ran past its time limit of "
                                  f"{svc.settings.train_soft_time_limit} s and was stopped.")
        except ServiceError as exc:
            outcome["message"] = exc.message
        except Exception as exc:  # a defect: the trial fails, the search goes on
            log.exception("trial %d of %s crashed", index, ref)
            outcome["message"] = (f"The trial stopped on an internal error "
                                  f"({type(exc).__name__}); it has been logged by the worker.")
    if asked is not None:
        _tell(optuna_study, asked, outcome)
    follow = tuning.record(
        svc.redis, ref, index, token, state=outcome["state"], params=chosen,
        value=outcome.get("value"), epochs=outcome.get("epochs"),
        seconds=outcome.get("seconds", time.perf_counter() - started),
        message=outcome.get("message"))
    follow_up(svc, ref, follow)
    return {"outcome": outcome["state"], "trial": index, "value": outcome.get("value"),
            "seconds": round(time.perf_counter() - started, 3)}


def _fit_trial(svc: WorkerServices, ref: RunRef, record: dict[str, Any],
               params: dict[str, Any], chosen: dict[str, Any], beat: TrialBeat,
               ) -> dict[str, Any]:
    """Train and score the chosen parameters; the trial's outcome fields."""
    trial_params = dict(params)
    hp = dict(trial_params.get("hyperparameters") or {})
    for name, value in chosen.items():
        if name == "use_metadata_features":
            trial_params[name] = value
        else:
            hp[name] = value
    trial_params["hyperparameters"] = hp
    dataset = _dataset(svc, ref, record, trial_params)
    tp = train_params(trial_params, svc.settings.train_threads)
    metric = params["search"]["metric"]
    result = run_trial(dataset, tp, metric, beat.should_stop)
    if result.value is None:
        return {"state": "failed", "epochs": result.epochs, "seconds": result.seconds,
                "message": f"This version's evaluation does not report {metric} yet."}
    return {"state": "complete", "value": round(result.value, 6), "epochs": result.epochs,
            "seconds": result.seconds}


def _tell(optuna_study: Any, asked: Any, outcome: dict[str, Any]) -> None:
    import optuna

    try:
        if outcome["state"] == "complete":
            optuna_study.tell(asked, outcome["value"])
        else:
            optuna_study.tell(asked, state=optuna.trial.TrialState.FAIL)
    except Exception:  # the run record is the search's truth; the study only guides sampling
        log.warning("could not tell the study the result of trial %s", asked.number,
                    exc_info=True)


def check(svc: WorkerServices, now: float | None = None) -> dict[str, int]:
    """One pass over the searches: lost trials end as failed; an ended search is settled."""
    outcome = {"searches": 0, "ended": 0}
    for member in svc.runs.active():
        try:
            ref = RunRef.parse(member)
            record = svc.runs.record(ref)
            if record is None or record["phase"] != "tuning":
                continue
            outcome["searches"] += 1
            since = tuning.waiting_since(record)
            if since is not None and since + svc.settings.visibility_timeout < (
                    now or time.time()):  # the parent's message was lost with the broker
                tuning.enqueue_search(svc.runs, ref)
                continue
            if tuning.ended_unsettled(record):  # its ender died before ending the run
                svc.runs.finish(ref, phase="failed",
                                message="The search ended but its run was left open; "
                                        "submit it again.")
                outcome["ended"] += 1
                continue
            follow = tuning.mark_lost(svc.redis, ref, svc.settings.heartbeat_stale_after, now)
            follow_up(svc, ref, follow)
            enqueue_trials(svc, ref, tuning.stranded(svc.redis, ref,
                                                     svc.settings.visibility_timeout, now))
            outcome["ended"] += follow.ended is not None
        except (ServiceError, ValueError):
            log.exception("could not check the search %s; the next pass retries", member)
    return outcome
