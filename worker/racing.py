"""Both metadata candidates fitted at once in this process, and the served fit started early.

:func:`race` is how a run with at least 2 threads, and no second worker to
offer a candidate to (:mod:`worker.candidates`), fits the candidates with and
without metadata features: at once, in two threads, each with half the run's
threads. Each is the other's live rival, so either can be dropped early when
it trails clearly (only one of them: :class:`~worker.selection.DropToken`).

Why at once: LightFM's Hogwild fit scales poorly across threads once
metadata features are shared by many rows (every update of a genre's
embedding contends for the same memory). On 1M interactions with metadata,
2 threads fit an epoch no faster than 1, so two 1-thread fits at once take
about as long as the longer one, where two 2-thread fits in a row take the
sum (bench/quality.py, docs/quality.md "Cost").

The served fit starts early. When the first candidate ends, its thread starts
the served fit (all the pairs) with the features of the candidate leading on
the curve, and trains it no further than that candidate's best epoch so far:
a best epoch only grows, so none of those epochs is ever one too many. Once
the choice is made, the run continues that fit to the chosen epochs with all
its threads if the leader won, and discards it if not (:class:`EarlyServed`).

The threads only fit and score. Progress, cancel checks and every Redis call
stay in the calling thread, which polls the fits every ``POLL_SECONDS`` and
stops them all at their next epoch once the run is cancelled or a fit failed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

from shared.contracts import CurvePoint
from shared.data.assembly import Dataset
from worker.fitting import (
    CancelHook,
    Hyperparameters,
    ModelStart,
    TrainingCancelled,
    TrainParams,
    fit_epoch,
    fit_inputs,
    new_model,
)
from worker.selection import CandidateResult, DropToken, EarlyStopping, Split, evaluation_fit

log = logging.getLogger(__name__)

#: How often the calling thread reports progress and checks for cancel (seconds).
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class EarlyServed:
    """The served fit started early: its model after ``epochs`` epochs on all the pairs."""

    metadata_features: bool
    model: Any  # LightFM
    epochs: int
    seconds: float


def best_epoch(points: list[CurvePoint], max_epochs: int) -> int:
    """The best epoch of a (possibly still growing) curve, as its early stopping sees it."""
    stopper = EarlyStopping(max_epochs)
    for point in list(points):
        stopper.update(point["epoch"], point["precision_at_k"])
    return stopper.best_epoch


@dataclass
class _Race:
    """What the threads of one race share."""

    variants: list[Dataset]
    half: TrainParams  # the run's parameters with half its threads
    max_epochs: int
    halt: threading.Event  # cancelled, or a fit failed: every fit stops at its next epoch
    decided: threading.Event  # both candidates ended: the early served fit stops
    curves: list[list[CurvePoint]]
    fractions: list[float]

    def bound(self, i: int) -> Callable[[], int]:
        """Epochs the early served fit may train now, for candidate ``i`` still fitting."""
        if not self.half.epochs_auto:
            return lambda: self.max_epochs
        return lambda: best_epoch(self.curves[i], self.max_epochs)


def race(variants: list[Dataset], params: TrainParams, split: Split, max_epochs: int,
         on_progress: Callable[[float], None], should_cancel: CancelHook,
         start: ModelStart | None) -> tuple[list[CandidateResult], EarlyServed | None]:
    """Fit both candidates at once; (their results, the served fit started early or None)."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    state = _Race(variants, replace(params, threads=max(1, params.threads // 2)), max_epochs,
                  threading.Event(), threading.Event(), [[], []], [0.0, 0.0])
    drop = DropToken()

    def fit_one(i: int) -> CandidateResult:
        def on_epoch(epoch: int) -> None:
            state.fractions[i] = epoch / max_epochs

        return evaluation_fit(variants[i], state.half, split.test_mask, max_epochs,
                              params.epochs_auto, on_epoch, state.halt.is_set, start,
                              split=split, full_metrics=False, rival=state.curves[1 - i],
                              points=state.curves[i], drop=drop)

    # Each fit's scoring passes multiply with BLAS: its share of threads, as for LightFM.
    with (threadpool_limits(limits=state.half.threads, user_api="blas"),
          ThreadPoolExecutor(max_workers=2, thread_name_prefix="candidate") as pool):
        fits = [pool.submit(fit_one, i) for i in range(2)]
        early: Future[EarlyServed | None] | None = None
        pending, cancelled = set(fits), False
        try:
            while pending:
                _, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                on_progress(sum(state.fractions) / 2)
                if any(f.done() and f.exception() is not None for f in fits):
                    state.halt.set()
                elif early is None and len(pending) == 1:
                    leader, bound = _leader(state, fits)
                    early = pool.submit(_serve_early, variants[leader],
                                        params.hyperparameters, bound, state, start)
                if not state.halt.is_set() and should_cancel():
                    cancelled = True
                    state.halt.set()
        except BaseException:
            # Redis lost under the progress or cancel check, say: the run's error, and no
            # thread may go on fitting for it (leaving the pool waits for every thread).
            state.halt.set()
            raise
        finally:
            state.decided.set()
    return _results(fits, cancelled), None if early is None else early.result()


def _results(fits: list[Future[CandidateResult]], cancelled: bool) -> list[CandidateResult]:
    """Both results; a fit's own error first, else TrainingCancelled when the run was."""
    errors = [e for e in (f.exception() for f in fits) if e is not None]
    real = [e for e in errors if not isinstance(e, TrainingCancelled)]
    if real:
        raise real[0]
    if cancelled or errors:
        raise TrainingCancelled("The run was cancelled.")
    return [f.result() for f in fits]


def _leader(state: _Race, fits: list[Future[CandidateResult]]) -> tuple[int, Callable[[], int]]:
    """(the candidate leading now that one has ended, how many served epochs it allows).

    Compared at equal epochs, as :meth:`~worker.selection._Curve.trails` does:
    the other's best so far against the ended one's best up to the other's
    latest scored epoch, metadata winning ties. The ended one allows its kept
    epochs; the other, still fitting, its best epoch so far.
    """
    ended = 0 if fits[0].done() else 1
    other = 1 - ended
    result = fits[ended].result()
    points = list(state.curves[other])
    reached = max([p["epoch"] for p in points], default=0)
    other_best = max([p["precision_at_k"] for p in points], default=0.0)
    ended_best = max([p["precision_at_k"] for p in result.curve if p["epoch"] <= reached],
                     default=0.0)
    if result.dropped or (other_best, state.variants[other].has_metadata) > (
            ended_best, state.variants[ended].has_metadata):
        return other, state.bound(other)
    return ended, lambda: result.epochs


def _serve_early(data: Dataset, hp: Hyperparameters, bound: Callable[[], int], state: _Race,
                 start: ModelStart | None) -> EarlyServed | None:
    """The served fit on the freed thread, never past ``bound()``, until the choice is made.

    None when it could not go on (the run halted, or the fit failed: the
    served fit then starts over in the calling thread and meets the same error).
    """
    started = time.perf_counter()
    try:
        model = start(data) if start is not None else new_model(hp)
        inputs = fit_inputs(data, hp, None)
        epochs = 0
        while not state.decided.is_set():
            if epochs < bound():
                fit_epoch(model, data, *inputs, state.half.threads, state.halt.is_set)
                epochs += 1
            else:  # caught up with the leader's best epoch: until its next scored epoch
                state.decided.wait(POLL_SECONDS / 5)
    except Exception as exc:  # the served fit is then redone in the calling thread
        if not isinstance(exc, TrainingCancelled):
            log.warning("the early served fit stopped (%s); it will be redone", exc)
        return None
    return EarlyServed(data.has_metadata, model, epochs, time.perf_counter() - started)
