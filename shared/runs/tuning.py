"""A search's state in its run record: the trials, the best so far, and how the search ends.

The record's ``tuning`` field (JSON) holds what the status shows plus internal keys
(starting with ``_``, hidden by :func:`shared.runs.records.public_tuning`). Every
change is one WATCH/MULTI transaction on the run record (:func:`transact`), so
parallel trials on any host never lose each other's results, and exactly one
caller sees the search end:

- :func:`announce` (the API, at once) shows the new run in phase ``tuning`` with every
  trial ``queued``; :func:`begin` (the parent task) starts the search and returns the
  trials to enqueue now (``parallelism`` caps them).
- :func:`claim` starts one trial (a duplicate delivery or a cancelled search skips).
- :func:`beat` keeps a running trial's heartbeat fresh.
- :func:`record` stores a trial's end (``complete``, ``failed`` or ``cancelled``).
- :func:`mark_lost` ends trials whose heartbeat went stale (their worker died).

:func:`record` and :func:`mark_lost` return a :class:`Followup`: more trials to
enqueue, and whether this call ended the search. The transaction that ends the
search also decides what follows: with a completed trial and no cancel, the run
goes back to ``queued`` with the best parameters in its ``params``, so an
ordinary training attempt (``recsys.train``, :mod:`worker.runner`) fits them on
all the data and serves them exactly as ``POST /train`` would; otherwise the
caller ends the run with :meth:`~shared.runs.service.Runs.finish`.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from shared.contracts import QUEUE_TRAIN, TASK_TUNE
from shared.registry import redis_guard
from shared.runs.records import FINAL_STATES, dump, now_iso, transact
from shared.runs.ref import RunRef
from shared.runs.service import Runs

log = logging.getLogger(__name__)

#: Trial states; the last three are final.
TRIAL_FINAL = ("complete", "failed", "cancelled")
#: Share of the run's progress the search covers; the final fit takes the rest.
SEARCH_PROGRESS = 90
FINAL_FIT_MESSAGE = "Search done; fitting the best parameters on all the data."


@dataclass
class Followup:
    """What the caller of :func:`record` or :func:`mark_lost` does next."""

    enqueue: list[int] = field(default_factory=list)
    #: None while trials remain; "final_fit" (the run is queued for its final fit),
    #: "cancelled" or "failed" (the caller ends the run) once this call ended the search.
    ended: str | None = None
    message: str = ""
    #: Optuna trial numbers of trials marked lost (to tell the study they failed).
    lost_numbers: list[int] = field(default_factory=list)


def new_state(metric: str, total: int, parallelism: int | None) -> dict[str, Any]:
    """The ``tuning`` field of a search just started."""
    first = total if parallelism is None else min(total, parallelism)
    return {
        "metric": metric, "trials_total": total, "trials_done": 0, "best": None,
        "trials": [{"trial": i, "params": None, "value": None, "state": "queued",
                    "epochs": None, "seconds": None, "worker": None} for i in range(total)],
        "_enqueued": first, "_parallelism": parallelism, "_started": False, "_ended": False,
    }


def announce(r: redis.Redis, ref: RunRef, metric: str, total: int,
             parallelism: int | None) -> None:
    """Show a run just created as a search waiting for a worker (phase ``tuning``)."""
    state = new_state(metric, total, parallelism)

    def update(rec: dict[str, Any]) -> dict[str, str] | None:
        if rec["status"] in FINAL_STATES or rec["phase"] != "queued":
            return None
        return {"phase": "tuning", "tuning": dump(state), "heartbeat": str(time.time()),
                "message": f"Tuning: {total} trials queued; waiting for a training worker."}

    transact(r, ref.key, update)


def begin(r: redis.Redis, ref: RunRef, owner: str) -> list[int] | None:
    """Start the search (the parent task): the trials to enqueue now; [] when a cancel
    came first (the caller ends the run), None when it already started (a duplicate)."""
    first: list[int] | None = None

    def update(rec: dict[str, Any]) -> dict[str, str] | None:
        nonlocal first
        state = _searching(rec)
        if state is None or state.get("_started"):
            first = None
            return None
        state["_started"], state["_sent_at"] = True, time.time()
        first = [] if rec.get("cancel_requested") else list(range(state["_enqueued"]))
        total = state["trials_total"]
        changes = {"owner": owner, "heartbeat": str(time.time()), "tuning": dump(state),
                   "attempts": str(rec["attempts"] + 1),
                   "message": f"Tuning: 0 of {total} trials done."}
        if not rec.get("start_timestamp"):
            changes["start_timestamp"] = now_iso()
        return changes

    transact(r, ref.key, update)
    return first


def _searching(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The search state while the run is still in its ``tuning`` phase, else None."""
    state = rec.get("tuning")
    if rec["status"] in FINAL_STATES or rec["phase"] != "tuning" or not state:
        return None
    return None if state.get("_ended") else dict(state)


def claim(r: redis.Redis, ref: RunRef, index: int, token: str, worker: str) -> str:
    """Start trial ``index``: "run", or "skip" (not queued any more, or the search ended).

    A cancelled search marks the trial ``cancelled`` and answers "cancelled"; the caller
    then reports it through :func:`record` like any other end.
    """
    answer = "skip"

    def update(rec: dict[str, Any]) -> dict[str, str] | None:
        nonlocal answer
        state = _searching(rec)
        if state is None or state["trials"][index]["state"] != "queued":
            answer = "skip"
            return None
        now = time.time()
        trial = dict(state["trials"][index], worker=worker, _owner=token, _heartbeat=now,
                     _started=now, _pid=os.getpid())
        answer = "cancelled" if rec.get("cancel_requested") else "run"
        trial["state"] = "running" if answer == "run" else "queued"
        state["trials"] = [*state["trials"][:index], trial, *state["trials"][index + 1:]]
        return {"tuning": dump(state), "heartbeat": str(time.time())}

    transact(r, ref.key, update)
    return answer


def beat(r: redis.Redis, ref: RunRef, index: int, token: str) -> bool:
    """Refresh a running trial's heartbeat; False once it was ended elsewhere (lost)."""

    def update(rec: dict[str, Any]) -> dict[str, str] | None:
        state = _searching(rec)
        if state is None:
            return None
        trial = state["trials"][index]
        if trial.get("_owner") != token or trial["state"] != "running":
            return None
        state["trials"][index] = {**trial, "_heartbeat": time.time()}
        return {"tuning": dump(state), "heartbeat": str(time.time())}

    return transact(r, ref.key, update) is not None


def _best(state: dict[str, Any]) -> dict[str, Any] | None:
    done = [t for t in state["trials"] if t["state"] == "complete" and t["value"] is not None]
    if not done:
        return None
    top = max(done, key=lambda t: (t["value"], -t["trial"]))
    return {"params": top["params"], "value": top["value"], "trial": top["trial"]}


def _settle(rec: dict[str, Any], state: dict[str, Any], follow: Followup) -> dict[str, str]:
    """Changes to the record after trials ended: counts, best, next trials, maybe the end."""
    trials = state["trials"]
    done = sum(t["state"] in TRIAL_FINAL for t in trials)
    total = state["trials_total"]
    state["trials_done"], state["best"] = done, _best(state)
    cancelling = bool(rec.get("cancel_requested"))
    running = sum(t["state"] == "running" for t in trials)
    queued_now = state["_enqueued"] - done - running
    # every trial that ended makes room for one more (parallelism), unless cancelling
    while not cancelling and state["_enqueued"] < total and queued_now + running < (
            state.get("_parallelism") or total):
        follow.enqueue.append(state["_enqueued"])
        state["_enqueued"] += 1
        state["_sent_at"] = time.time()
        queued_now += 1
    progress = max(int(rec["progress"]), SEARCH_PROGRESS * done // total)
    best = state["best"]
    message = f"Tuning: {done} of {total} trials done."
    if best is not None:
        message += f" Best so far: trial {best['trial']}, {state['metric']} {best['value']:.4f}."
    changes = {"progress": str(min(progress, 99)), "message": message}
    if done == total or (cancelling and running == 0):
        state["_ended"] = True
        changes.update(_end(rec, state, follow))
    changes["tuning"] = dump(state)
    return changes


def _end(rec: dict[str, Any], state: dict[str, Any], follow: Followup) -> dict[str, str]:
    """The search just ended: queue the final fit, or say how the caller ends the run."""
    best = state["best"]
    if rec.get("cancel_requested"):
        state["trials"] = [{**t, "state": "cancelled"} if t["state"] == "queued" else t
                           for t in state["trials"]]
        follow.ended, follow.message = "cancelled", "Cancelled on request during the search."
        return {}
    if best is None:
        follow.ended = "failed"
        follow.message = ("No trial of the search completed, so there is nothing to serve; "
                          "see each trial's message in the status's tuning field.")
        return {}
    params = dict(rec.get("params") or {})
    chosen = dict(best["params"])
    if "use_metadata_features" in chosen:
        params["use_metadata_features"] = chosen.pop("use_metadata_features")
    params["hyperparameters"] = {**(params.get("hyperparameters") or {}), **chosen}
    follow.ended, follow.message = "final_fit", FINAL_FIT_MESSAGE
    # back to queued: an ordinary training attempt (worker.runner) claims it
    return {"params": dump(params), "phase": "queued", "owner": "",
            "message": FINAL_FIT_MESSAGE, "heartbeat": str(time.time())}


def record(r: redis.Redis, ref: RunRef, index: int, token: str, *, state: str,
           params: dict[str, Any] | None = None, value: float | None = None,
           epochs: int | None = None, seconds: float | None = None,
           message: str | None = None) -> Followup:
    """Store the end of trial ``index`` (run by ``token``); what follows."""
    follow = Followup()

    def update(rec: dict[str, Any]) -> dict[str, str] | None:
        search = _searching(rec)
        if search is None:
            return None
        trial = search["trials"][index]
        if trial.get("_owner") != token or trial["state"] in TRIAL_FINAL:
            return None
        ended = {**trial, "state": state, "value": value, "epochs": epochs,
                 "seconds": None if seconds is None else round(seconds, 3),
                 "_ended": time.time()}
        if params is not None:
            ended["params"] = params
        if message:
            ended["message"] = message
        search["trials"] = [*search["trials"][:index], ended, *search["trials"][index + 1:]]
        follow.enqueue.clear()
        return _settle(rec, search, follow)

    transact(r, ref.key, update)
    return follow


def mark_lost(r: redis.Redis, ref: RunRef, stale_after: float,
              now: float | None = None) -> Followup:
    """End the running trials whose heartbeat is older than ``stale_after`` as failed.

    While a cancel is pending, trials still queued are marked cancelled too, so the run
    ends without waiting for a worker to pick their messages up.
    """
    moment = time.time() if now is None else now
    follow = Followup()
    lost_message = ("Lost with its worker (no heartbeat for "
                    f"{stale_after:g} s: killed, out of memory, or its host went away).")

    def update(rec: dict[str, Any]) -> dict[str, str] | None:
        search = _searching(rec)
        if search is None:
            return None
        changed, numbers, trials = False, [], []
        for trial in search["trials"]:
            if trial["state"] == "running" and moment - trial["_heartbeat"] > stale_after:
                trial = {**trial, "state": "failed", "message": lost_message, "_ended": moment}
                if trial.get("_number") is not None:
                    numbers.append(int(trial["_number"]))
                changed = True
            elif trial["state"] == "queued" and rec.get("cancel_requested"):
                trial = {**trial, "state": "cancelled"}
                changed = True
            trials.append(trial)
        if not changed:
            return None
        search["trials"] = trials
        follow.enqueue.clear()
        follow.lost_numbers = numbers
        return _settle(rec, search, follow)

    transact(r, ref.key, update)
    return follow


def note_trial(r: redis.Redis, ref: RunRef, index: int, token: str,
               params: dict[str, Any], number: int) -> None:
    """Show a running trial's parameters (and remember its Optuna number) once chosen."""

    def update(rec: dict[str, Any]) -> dict[str, str] | None:
        search = _searching(rec)
        if search is None or search["trials"][index].get("_owner") != token:
            return None
        search["trials"][index] = {**search["trials"][index], "params": params,
                                   "_number": number}
        return {"tuning": dump(search)}

    transact(r, ref.key, update)


def stranded(r: redis.Redis, ref: RunRef, older_than: float,
             now: float | None = None) -> list[int]:
    """Trials sent but still queued after ``older_than`` seconds: their message may have
    been lost with a broker or held by a worker that died; they are sent again (a
    duplicate is harmless, :func:`claim` lets one through). Their send time is renewed."""
    moment = time.time() if now is None else now
    again: list[int] = []

    def update(rec: dict[str, Any]) -> dict[str, str] | None:
        again.clear()
        state = _searching(rec)
        if state is None or not state.get("_started"):
            return None
        sent_at = float(state.get("_sent_at") or rec.get("heartbeat") or moment)
        waiting = [t["trial"] for t in state["trials"][:state["_enqueued"]]
                   if t["state"] == "queued"]
        if not waiting or moment - sent_at < older_than:
            return None
        again.extend(waiting)
        state["_sent_at"] = moment
        return {"tuning": dump(state)}

    transact(r, ref.key, update)
    return again


def waiting_since(rec: dict[str, Any]) -> float | None:
    """For a search whose parent task has not started yet: when it was queued, else None."""
    state = _searching(rec)
    if state is None or state.get("_started"):
        return None
    return float(rec.get("heartbeat") or 0.0)


def ended_unsettled(rec: dict[str, Any]) -> bool:
    """True for a search that ended but whose run was not ended (its ender died between)."""
    state = rec.get("tuning") or {}
    return (rec["status"] not in FINAL_STATES and rec["phase"] == "tuning"
            and bool(state.get("_ended")))


def enqueue_search(runs: Runs, ref: RunRef) -> None:
    """Send the search's parent task (by name) and remember its task id."""
    if runs.celery is None:
        raise RuntimeError("this Runs service has no producer to enqueue with")
    task_id = f"tune-{ref.tenant}-{ref.model_id}-v{ref.version}-{uuid.uuid4().hex[:8]}"
    runs.celery.send_task(
        TASK_TUNE, kwargs={"tenant": ref.tenant, "model_id": ref.model_id,
                           "version": ref.version},
        queue=QUEUE_TRAIN, task_id=task_id)
    with redis_guard("recording a task id"):  # the heartbeat dates the wait (waiting_since)
        runs.redis.hset(ref.key, mapping={"task_id": task_id, "heartbeat": str(time.time())})


def submit_search(runs: Runs, tenant: str, model_id: str, params: dict[str, Any],
                  callback_url: str | None) -> RunRef:
    """Create a run whose ``params`` hold a ``search`` and enqueue its parent task
    (``POST /tune``); 503 (run ended) when the broker is down, as ``POST /train``."""
    ref = runs.create(tenant, model_id, params, callback_url)
    search = params["search"]
    announce(runs.redis, ref, search["metric"], search["trials"], search.get("parallelism"))
    runs.send_or_end(ref, lambda: enqueue_search(runs, ref), "search")
    return ref
