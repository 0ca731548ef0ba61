"""A whole search in-process (fakeredis, Optuna's journal on it, no broker): the tasks the
search sends are run here one by one, as workers would take them from the queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fakeredis
import pytest

from bench._data import write_batch
from shared.config import Settings
from shared.contracts import TASK_TRAIN, TASK_TUNE, TASK_TUNE_TRIAL
from shared.models.artifact import load_artifact
from shared.runs import tuning
from shared.runs.records import get_model, get_run, get_status
from shared.runs.ref import RunRef
from shared.runs.search import DEFAULT_SPACE
from shared.storage import Storage
from tests.helpers.synthetic import clustered
from worker.context import WorkerServices
from worker.runner import execute_run
from worker.tuning import search, study

T = "acme"
FAST: dict[str, Any] = {"hyperparameters": {"epochs": 3, "no_components": 8,
                                            "learning_rate": 0.05},
                        "evaluation": {"holdout": 0.2}}


class QueueCelery:
    """Records what would be sent to the broker, for the test to run in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_task(self, name: str, kwargs: dict[str, Any], **_: Any) -> None:
        self.sent.append((name, kwargs))


@pytest.fixture
def svc(tmp_path: Path, fake_redis: fakeredis.FakeRedis) -> WorkerServices:
    settings = Settings(data_dir=tmp_path, heartbeat_interval=0.05, heartbeat_stale_after=30)
    storage = Storage(str(tmp_path / "storage"))
    entities, interactions = clustered(n_users=120, n_items=60, per_user=8)
    write_batch(storage, fake_redis, T, "entities", entities, ("a",))
    write_batch(storage, fake_redis, T, "interactions", interactions, ("a",))
    return WorkerServices(settings=settings, redis=fake_redis, storage=storage,
                          celery=QueueCelery())  # type: ignore[arg-type]


def submit(svc: WorkerServices, trials: int, model_id: str = "m", **search_opts: Any) -> RunRef:
    """What POST /tune does (the API's parameter resolution is tested in tests/api)."""
    params = {**FAST, "search": {"trials": trials, "metric": "precision_at_k",
                                 "space": {"no_components": [4, 16],
                                           "learning_rate": [0.01, 0.2]},
                                 "parallelism": None, **search_opts}}
    return tuning.submit_search(svc.runs, T, model_id, params, None)


def run_next(svc: WorkerServices) -> str:
    """Take the oldest message and run its task in-process; its task name."""
    queue: QueueCelery = svc.celery  # type: ignore[assignment]
    name, kw = queue.sent.pop(0)
    ref = RunRef(kw["tenant"], kw["model_id"], kw["version"])
    if name == TASK_TUNE:
        search.start_search(svc, ref)
    elif name == TASK_TUNE_TRIAL:
        search.execute_trial(svc, ref, kw["trial"], "w1@host")
    elif name == TASK_TRAIN:
        execute_run(svc, ref, lambda _meta: None)
    return name


def drain(svc: WorkerServices) -> list[str]:
    queue: QueueCelery = svc.celery  # type: ignore[assignment]
    names = []
    while queue.sent:
        names.append(run_next(svc))
    return names


def test_a_search_runs_its_trials_then_serves_the_best_parameters(
        svc: WorkerServices) -> None:
    ref = submit(svc, trials=4)
    queued = get_status(svc.redis, T, "m")
    assert (queued["phase"], queued["tuning"]["trials_total"]) == ("tuning", 4)  # type: ignore[index]
    assert [t["state"] for t in queued["tuning"]["trials"]] == ["queued"] * 4  # type: ignore[index]

    names = drain(svc)

    assert names == [TASK_TUNE, *[TASK_TUNE_TRIAL] * 4, TASK_TRAIN]
    final = get_status(svc.redis, T, "m")
    assert (final["status"], final["phase"], final["progress"]) == ("completed", "done", 100)
    tuned = final["tuning"]
    assert tuned is not None and tuned["trials_done"] == 4
    trials = tuned["trials"]
    assert all(t["state"] == "complete" and t["worker"] == "w1@host" and t["epochs"] == 3
               and t["seconds"] > 0 and not any(k.startswith("_") for k in t) for t in trials)
    # the first trial tries the request's own parameters (inside the space)
    assert trials[0]["params"] == {"no_components": 8, "learning_rate": 0.05}
    best = max(trials, key=lambda t: t["value"])
    assert tuned["best"] == {"params": best["params"], "value": best["value"],
                             "trial": best["trial"]}
    # the best parameters were fit on all the data and became the serving version
    assert get_model(svc.redis, T, "m")["serving_version"] == 1  # type: ignore[index]
    manifest = load_artifact(svc.storage, T, "m", 1).manifest
    assert {k: manifest["hyperparameters"][k] for k in best["params"]} == best["params"]
    assert final["metrics"] is not None
    assert not list(svc.redis.scan_iter(match=f"{study.journal_prefix(ref)}:*"))


def test_parallelism_caps_the_trials_queued_at_once(svc: WorkerServices) -> None:
    submit(svc, trials=3, parallelism=1)
    queue: QueueCelery = svc.celery  # type: ignore[assignment]
    run_next(svc)  # the parent
    assert [n for n, _ in queue.sent] == [TASK_TUNE_TRIAL]
    run_next(svc)  # trial 0 ends and makes room for trial 1
    assert [(n, kw.get("trial")) for n, kw in queue.sent] == [(TASK_TUNE_TRIAL, 1)]
    drain(svc)
    assert get_status(svc.redis, T, "m")["status"] == "completed"


def test_cancel_stops_the_queued_trials_and_ends_the_run(svc: WorkerServices) -> None:
    submit(svc, trials=4)
    run_next(svc)  # the parent
    run_next(svc)  # trial 0
    status, ended_now = svc.runs.request_cancel(T, "m")
    assert not ended_now and status["phase"] == "tuning"

    names = drain(svc)

    assert TASK_TRAIN not in names
    final = get_status(svc.redis, T, "m")
    assert (final["status"], final["phase"]) == ("error", "cancelled")
    states = [t["state"] for t in final["tuning"]["trials"]]  # type: ignore[index]
    assert states == ["complete", "cancelled", "cancelled", "cancelled"]
    assert get_model(svc.redis, T, "m")["serving_version"] is None  # type: ignore[index]


def test_cancel_before_any_worker_started_ends_the_run_at_the_next_check(
        svc: WorkerServices) -> None:
    submit(svc, trials=2)
    svc.runs.request_cancel(T, "m")
    search.check(svc)
    final = get_status(svc.redis, T, "m")
    assert (final["status"], final["phase"]) == ("error", "cancelled")
    drain(svc)  # the parent's message, taken later, does nothing
    assert get_status(svc.redis, T, "m")["phase"] == "cancelled"


def test_a_trial_lost_with_its_worker_is_failed_and_the_search_goes_on(
        svc: WorkerServices) -> None:
    ref = submit(svc, trials=3)
    run_next(svc)  # the parent; trials 0, 1, 2 queued
    # a worker took trial 0 and died mid-trial (it never beats or reports again)
    assert tuning.claim(svc.redis, ref, 0, "dead-worker", "w9@gone") == "run"
    queue: QueueCelery = svc.celery  # type: ignore[assignment]
    queue.sent.pop(0)  # its message was acknowledged with the dead process
    assert search.check(svc)["ended"] == 0  # heartbeat still fresh: nothing yet
    import time

    search.check(svc, now=time.time() + 60)  # later than heartbeat_stale_after
    lost = get_status(svc.redis, T, "m")["tuning"]["trials"][0]  # type: ignore[index]
    assert lost["state"] == "failed" and "Lost with its worker" in lost["message"]
    assert lost["worker"] == "w9@gone"

    drain(svc)

    final = get_status(svc.redis, T, "m")
    assert final["status"] == "completed"
    assert [t["state"] for t in final["tuning"]["trials"]] == [  # type: ignore[index]
        "failed", "complete", "complete"]
    assert final["tuning"]["best"]["trial"] in (1, 2)  # type: ignore[index]


def test_a_duplicate_delivery_of_a_trial_is_skipped(svc: WorkerServices) -> None:
    ref = submit(svc, trials=1)
    run_next(svc)
    assert tuning.claim(svc.redis, ref, 0, "first", "w1") == "run"
    assert search.execute_trial(svc, ref, 0, "w2") == {"outcome": "skipped"}


def test_a_search_whose_trials_all_fail_ends_as_error_with_a_reason(
        svc: WorkerServices) -> None:
    # the evaluation does not report map_at_k before the quality issue lands
    submit(svc, trials=2, metric="map_at_k")
    names = drain(svc)
    final = get_status(svc.redis, T, "m")
    if final["status"] == "completed":  # the quality issue landed: map_at_k is reported
        assert names[-1] == TASK_TRAIN
        return
    assert (final["status"], final["phase"]) == ("error", "failed")
    assert "No trial of the search completed" in final["message"]
    trials = final["tuning"]["trials"]  # type: ignore[index]
    assert all(t["state"] == "failed" and "map_at_k" in t["message"] for t in trials)


def test_the_default_space_is_searched_when_none_is_given(svc: WorkerServices) -> None:
    ref = submit(svc, trials=1, space=dict(DEFAULT_SPACE))
    drain(svc)
    record = get_run(svc.redis, T, "m", ref.version)
    assert record is not None
    assert set(record["tuning"]["trials"][0]["params"]) == set(DEFAULT_SPACE)


def test_trials_whose_messages_were_lost_are_sent_again_after_the_visibility_timeout(
        svc: WorkerServices) -> None:
    import time

    submit(svc, trials=2)
    run_next(svc)  # the parent sends trials 0 and 1 ...
    queue: QueueCelery = svc.celery  # type: ignore[assignment]
    queue.sent.clear()  # ... and the broker loses them
    search.check(svc)
    assert queue.sent == []  # not yet: they may still be waiting for a busy worker
    search.check(svc, now=time.time() + svc.settings.visibility_timeout + 1)
    assert sorted(kw["trial"] for _, kw in queue.sent) == [0, 1]
    drain(svc)
    assert get_status(svc.redis, T, "m")["status"] == "completed"


def test_a_lost_parent_message_is_sent_again(svc: WorkerServices) -> None:
    import time

    submit(svc, trials=1)
    queue: QueueCelery = svc.celery  # type: ignore[assignment]
    queue.sent.clear()
    search.check(svc, now=time.time() + svc.settings.visibility_timeout + 1)
    assert [name for name, _ in queue.sent] == [TASK_TUNE]
    drain(svc)
    assert get_status(svc.redis, T, "m")["status"] == "completed"
