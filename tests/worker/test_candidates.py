"""The Redis side of the second candidate fit (worker/candidates.py), on fakeredis."""

from __future__ import annotations

from pathlib import Path

import fakeredis
import pytest

from shared.config import Settings
from shared.errors import TrainingFailed
from shared.runs.ref import RunRef
from shared.storage import Storage
from worker.candidates import Offer, Share, help_run, result_json
from worker.context import WorkerServices
from worker.fitting import TrainingCancelled
from worker.selection import CandidateResult

REF = RunRef("acme", "m", 1)
RESULT = CandidateResult(
    metadata_features=False, epochs=7, precision_at_k=0.25,
    curve=[{"epoch": 1, "precision_at_k": 0.1}, {"epoch": 7, "precision_at_k": 0.25}],
    metrics={"k": 10, "precision_at_k": 0.25, "recall_at_k": 0.5, "auc": 0.9,
             "ndcg_at_k": 0.3, "map_at_k": 0.2, "coverage": 0.4,
             "baseline_precision_at_k": 0.1, "baseline_ndcg_at_k": 0.1,
             "baseline_map_at_k": 0.1, "baseline_coverage": 0.01, "evaluated_sources": 30},
    scoring_seconds=0.5, seconds=2.0, worker="host:123")


@pytest.fixture
def svc(tmp_path: Path, fake_redis: fakeredis.FakeRedis) -> WorkerServices:
    settings = Settings(data_dir=tmp_path, heartbeat_interval=0.05, heartbeat_stale_after=0.3)
    return WorkerServices(settings=settings, redis=fake_redis,
                          storage=Storage(str(tmp_path / "storage")),
                          celery=None)  # type: ignore[arg-type]


def _offer(svc: WorkerServices, cancel: bool = False) -> Offer:
    return Offer(svc, REF, "attempt-1", lambda: cancel)


def test_a_helpers_result_comes_back_to_the_run_as_it_was(svc: WorkerServices) -> None:
    helper = Share(svc.redis, REF, "attempt-1", 60)
    assert helper.claim("host:123")
    offer = _offer(svc)
    assert not offer.take(), "the run must not fit a candidate a helper holds"
    helper.put(result_json(RESULT, "hash"))
    assert offer.collect("hash", lambda: False) == RESULT
    offer.close()
    assert not svc.redis.keys("*candidate*")


def test_the_run_fits_it_itself_when_nobody_claimed_it(svc: WorkerServices) -> None:
    offer = _offer(svc)
    assert offer.take()
    assert not Share(svc.redis, REF, "attempt-1", 60).claim("host:123"), "fitted twice"


def test_the_run_takes_over_when_the_helpers_lease_runs_out(svc: WorkerServices) -> None:
    Share(svc.redis, REF, "attempt-1", 0.2).claim("host:123")  # never renewed: a lost worker
    offer = _offer(svc)
    assert offer.collect("hash", lambda: False) is None
    assert svc.redis.get(offer.share.key("claim")).startswith("run:")


def test_a_helpers_error_ends_the_run_with_it(svc: WorkerServices) -> None:
    helper = Share(svc.redis, REF, "attempt-1", 60)
    helper.claim("host:123")
    helper.put({"error": "The model diverged.", "code": "training_diverged"})
    with pytest.raises(TrainingFailed, match="diverged"):
        _offer(svc).collect("hash", lambda: False)


def test_a_result_on_other_data_is_refitted(svc: WorkerServices) -> None:
    helper = Share(svc.redis, REF, "attempt-1", 60)
    helper.claim("host:123")
    helper.put(result_json(RESULT, "other"))
    assert _offer(svc).collect("hash", lambda: False) is None


def test_cancel_stops_the_wait(svc: WorkerServices) -> None:
    Share(svc.redis, REF, "attempt-1", 60).claim("host:123")
    with pytest.raises(TrainingCancelled):
        _offer(svc, cancel=True).collect("hash", lambda: False)


def test_a_helper_of_an_attempt_that_is_over_does_nothing(svc: WorkerServices) -> None:
    assert help_run(svc, REF, "attempt-1")["outcome"] == "skipped"  # no such run
    assert not svc.redis.keys("*candidate*")


@pytest.mark.parametrize("cores, threads, offered", [(2, 2, False), (2, 1, True),
                                                     (4, 2, True), (3, 2, False)])
def test_the_candidate_is_offered_only_when_the_cores_fit_two_fits_at_once(
        monkeypatch: pytest.MonkeyPatch, cores: int, threads: int, offered: bool) -> None:
    import worker.candidates as candidates

    monkeypatch.setattr(candidates.os, "sched_getaffinity", lambda pid: set(range(cores)),
                        raising=False)
    assert candidates.worth_offering(threads) is offered
