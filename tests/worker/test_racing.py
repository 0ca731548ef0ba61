"""The two metadata candidates fitted at once in one process (worker/racing.py).

With 2 threads and no other worker to offer the second candidate to, the run
fits both candidates at once, one thread each, and starts the served fit on
the thread the first to end frees. What it chooses and serves must not
change, and cancel and errors must stop every fit.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import redis

from shared.data.assembly import DatasetOptions, build_dataset
from shared.errors import TrainingFailed
from tests.helpers.synthetic import clustered
from worker import fitting, racing, selection, training
from worker.choice import Choice, choose
from worker.evaluation import EvaluationSettings, holdout_split
from worker.fitting import Hyperparameters, TrainingCancelled, TrainParams, fit_inputs, new_model
from worker.racing import EarlyServed
from worker.selection import DropToken

#: Seconds a fit may wait for the other at a rendezvous before the test fails.
RENDEZVOUS = 30


def _dataset() -> Any:
    entities, interactions = clustered(with_metadata=True)
    return build_dataset(entities, interactions, DatasetOptions(use_metadata_features="auto"))


def _params(threads: int, epochs: int = 12, epochs_auto: bool = True) -> TrainParams:
    return TrainParams(hyperparameters=Hyperparameters(no_components=8, epochs=epochs),
                       epochs_auto=epochs_auto, max_epochs=epochs, metadata="auto",
                       evaluation=EvaluationSettings(holdout=0.2), threads=threads)


class Recorder:
    """Wraps :func:`worker.fitting.fit_epoch` as :mod:`worker.selection` calls it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, before: Any = None) -> None:
        self.calls: list[tuple[bool, int, int]] = []  # (metadata, threads, thread ident)
        self.lock = threading.Lock()
        self.before = before
        real = selection.fit_epoch

        def recording(model: Any, dataset: Any, *args: Any) -> None:
            with self.lock:
                self.calls.append((dataset.has_metadata, args[-2], threading.get_ident()))
                n = self.epochs(dataset.has_metadata)
            if self.before is not None:
                self.before(dataset.has_metadata, n)
            real(model, dataset, *args)

        monkeypatch.setattr(selection, "fit_epoch", recording)

    def epochs(self, metadata: bool) -> int:
        """Epochs started so far by the candidate with (or without) metadata."""
        return sum(1 for m, _, _ in self.calls if m is metadata)


def _choose(params: TrainParams, should_cancel: Any = lambda: False) -> Choice:
    dataset = _dataset()
    return choose(dataset, params, holdout_split(dataset, 0.2), lambda f: None, should_cancel)


def test_with_two_threads_both_candidates_fit_at_once_one_thread_each(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a run with 2 threads comparing the candidates with and without metadata,
    # whose fits must both reach their first epoch before either trains it
    rendezvous = threading.Barrier(2, timeout=RENDEZVOUS)

    def meet(metadata: bool, n: int) -> None:
        if n == 1:
            rendezvous.wait()  # BrokenBarrierError (the test fails) if they ran in turn

    monkeypatch.setattr(selection, "SCORING_BUDGET", 1e9)  # score every epoch
    recorder = Recorder(monkeypatch, meet)
    # When it chooses
    together = _choose(_params(threads=2))
    # Then the two fits ran at once, in two threads, with one LightFM thread each
    assert {threads for _, threads, _ in recorder.calls} == {1}
    assert len({ident for _, _, ident in recorder.calls}) == 2
    assert recorder.epochs(True) > 0 and recorder.epochs(False) > 0
    # And fitting at once changes nothing: the choice and both curves are those of the
    # same fits made one after the other with one thread
    monkeypatch.undo()
    monkeypatch.setattr(selection, "SCORING_BUDGET", 1e9)
    in_turn = _choose(_params(threads=1))
    assert (together.epochs, together.metadata_features, together.candidates) == (
        in_turn.epochs, in_turn.metadata_features, in_turn.candidates)
    assert [r.curve for r in together.results] == [r.curve for r in in_turn.results]


def test_one_thread_fits_the_candidates_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a run with 1 thread: two fits at once would take twice its share of the cores
    recorder = Recorder(monkeypatch)
    _choose(_params(threads=1))
    # Then one candidate is fitted after the other, in this thread
    order = [metadata for metadata, _, _ in recorder.calls]
    assert order == sorted(order, reverse=True)  # every epoch with metadata comes first
    assert {ident for _, _, ident in recorder.calls} == {threading.get_ident()}


@pytest.mark.parametrize("redis_lost", [False, True])
def test_a_cancel_or_a_failing_cancel_check_stops_both_fits_at_their_next_epoch(
        monkeypatch: pytest.MonkeyPatch, redis_lost: bool) -> None:
    # Given two fits of 200 epochs at once, each held at its 3rd epoch until the run's
    # cancel check has answered yes, or has failed (Redis lost)
    answered = threading.Event()

    def hold(metadata: bool, n: int) -> None:
        if n >= 3:
            assert answered.wait(RENDEZVOUS), "the cancel check never answered"

    monkeypatch.setattr(racing, "POLL_SECONDS", 0.01)
    recorder = Recorder(monkeypatch, hold)

    def should_cancel() -> bool:
        if recorder.epochs(True) >= 3 and recorder.epochs(False) >= 3:
            answered.set()
            if redis_lost:
                raise redis.ConnectionError("Redis is gone")
        return answered.is_set()

    # When the run is cancelled, or its check fails
    with pytest.raises(redis.ConnectionError if redis_lost else TrainingCancelled):
        _choose(_params(threads=2, epochs=200, epochs_auto=False), should_cancel)
    # Then the run ends with that at once: both fits stopped within an epoch or two of it
    assert recorder.epochs(True) <= 5 and recorder.epochs(False) <= 5


def test_a_fit_that_fails_ends_the_run_with_its_error_and_stops_the_other(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given two fits at once, where the one with metadata diverges at its 3rd epoch
    failed = threading.Event()

    def diverge(metadata: bool, n: int) -> None:
        if metadata and n == 3:
            failed.set()
            raise TrainingFailed("diverged", code="training_diverged")
        if not metadata and n >= 3:
            assert failed.wait(RENDEZVOUS)

    monkeypatch.setattr(racing, "POLL_SECONDS", 0.01)
    recorder = Recorder(monkeypatch, diverge)
    # When the run chooses
    with pytest.raises(TrainingFailed) as raised:
        _choose(_params(threads=2, epochs=200, epochs_auto=False))
    # Then the run ends with that error, not as cancelled, and the other fit stopped too
    assert raised.value.code == "training_diverged"
    assert recorder.epochs(False) <= 5


def test_of_two_fits_at_once_only_one_can_be_dropped() -> None:
    token = DropToken()
    assert token.take() and not token.take() and not token.take()


def test_the_served_fit_starts_early_and_never_trains_past_the_leaders_best_epoch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given scripted holdout curves: with metadata it peaks at epoch 4 (then stops after its
    # patience, at 7); without, it is half as good and is dropped after 3 scored epochs
    dataset = _dataset()
    threads_of: dict[int, bool] = {}  # thread ident -> metadata of the candidate it fits
    epochs_of = {True: 0, False: 0}

    def on_candidate_epoch(metadata: bool, n: int) -> None:
        threads_of[threading.get_ident()] = metadata
        epochs_of[metadata] = n
        if metadata and n == 6:  # hold it until the early served fit has trained an epoch
            assert early_trained.wait(RENDEZVOUS), "the served fit did not start early"

    def scripted(holdout: Any, source_repr: Any, target_repr: Any) -> float:
        metadata = threads_of[threading.get_ident()]
        e = epochs_of[metadata]
        figure = 0.3 + 0.01 * min(e, 4) - 0.001 * max(0, e - 4)
        return figure if metadata else figure / 2

    served: list[tuple[bool, int]] = []  # (metadata, threads) of each epoch on all pairs
    early_trained = threading.Event()

    def recording(real: Any) -> Any:
        def fit_epoch(model: Any, data: Any, interactions: Any, *args: Any) -> None:
            if interactions.nnz == dataset.rows.size:
                served.append((data.has_metadata, args[-2]))
            real(model, data, interactions, *args)
            if threading.current_thread() is not threading.main_thread():
                early_trained.set()
        return fit_epoch

    monkeypatch.setattr(selection, "holdout_precision", scripted)
    monkeypatch.setattr(selection, "SCORING_BUDGET", 1e9)  # score every epoch
    Recorder(monkeypatch, on_candidate_epoch)
    monkeypatch.setattr(racing, "fit_epoch", recording(racing.fit_epoch))
    monkeypatch.setattr(fitting, "fit_epoch", recording(fitting.fit_epoch))
    # When a 2-thread run chooses and trains
    model = training.train(dataset, _params(threads=2, epochs=30), lambda p, f: None,
                           lambda: False)
    # Then metadata and the peak's 4 epochs are chosen, and the served fit trained exactly
    # those 4 epochs on all pairs with metadata: the first early on one thread, any left
    # after the choice on two
    assert (model.metadata_features, model.epochs) == (True, 4)
    assert all(metadata for metadata, _ in served) and len(served) == 4, served
    threads = [n for _, n in served]
    assert threads[0] == 1 and threads == sorted(threads), served
    assert model.candidate_fits["without_metadata"]["dropped"]


def test_a_served_fit_continued_from_an_early_start_equals_one_fit_in_one_go() -> None:
    # Given a served fit started early that trained 2 epochs (one thread: reproducible)
    dataset = _dataset()
    hp = Hyperparameters(no_components=8)
    model, inputs = new_model(hp), fit_inputs(dataset, hp, None)
    for _ in range(2):
        selection.fit_epoch(model, dataset, *inputs, 1, lambda: False)
    early = EarlyServed(True, model, epochs=2, seconds=0.0)
    # When it is continued to 5 epochs, and when the same fit runs in one go
    continued, _ = training._served(dataset, hp, 5, 1, lambda f: None, lambda: False,
                                    early=early)
    in_one_go, _ = training._served(dataset, hp, 5, 1, lambda f: None, lambda: False)
    # Then the two served models are the same
    assert np.array_equal(continued.source_repr, in_one_go.source_repr)
    assert np.array_equal(continued.target_repr, in_one_go.target_repr)
