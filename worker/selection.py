"""Choices made from the data: the epoch count and whether to use metadata features.

API.md, "Choices made from the data". An *evaluation fit* trains on the
holdout split epoch by epoch and scores precision@k on the held-out pairs as
it goes (:func:`worker.evaluation.holdout_precision`, one numpy pass); with
early stopping it stops once the curve has not improved for a patience and
keeps the best epoch. :func:`evaluation_fit` is one candidate and is pure, so
each candidate can run as its own task; :func:`choose` runs the candidates
(with and without metadata features, when ``"auto"`` compares them) and
keeps the better, metadata winning ties.

Early stopping is written here rather than taken from a library: LightFM has
none, and the loop must also report progress and honour cancellation
between epochs, which the training loop already does.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from shared.contracts import Candidates, CurvePoint, Metrics
from shared.data.assembly import Dataset
from worker.evaluation import evaluate_holdout, holdout_precision, prepare_holdout
from worker.fitting import (
    CancelHook,
    ModelStart,
    TrainParams,
    check_finite,
    fit_epoch,
    fit_inputs,
    new_model,
    representations,
)

#: Patience: epochs without improvement before stopping, at least this many ...
PATIENCE_MIN = 3
#: ... or this share of the best epoch so far, when larger (later peaks are flatter).
PATIENCE_SHARE = 0.2
#: A new best must beat the old by this much (relative), so noise does not extend training.
MIN_IMPROVEMENT = 0.002
#: Scoring may cost at most this share of an epoch's time; past it, score every few epochs.
SCORING_BUDGET = 0.25
#: Never score less often than every this many epochs.
MAX_SCORE_INTERVAL = 5
#: The curve scores at most this many sources (a fixed sample, so epochs compare), so that
#: scoring after every epoch stays cheap; the reported metrics and the metadata comparison
#: use the run's ``max_sources`` (default 10,000) at the kept epoch.
CURVE_MAX_SOURCES = 3_000


@dataclass
class EarlyStopping:
    """Tracks the best epoch of a validation curve; says when to stop."""

    max_epochs: int
    best_epoch: int = 0
    best: float = -math.inf

    @property
    def patience(self) -> int:
        """Epochs without improvement tolerated after the best one."""
        return max(PATIENCE_MIN, math.ceil(PATIENCE_SHARE * self.best_epoch))

    def update(self, epoch: int, score: float) -> bool:
        """Record the score after ``epoch``; True when training should stop."""
        if score > self.best * (1 + MIN_IMPROVEMENT) or self.best_epoch == 0:
            self.best, self.best_epoch = score, epoch
        return epoch >= self.max_epochs or epoch - self.best_epoch >= self.patience


@dataclass(frozen=True)
class CandidateResult:
    """One evaluation fit: its curve, the epoch kept, and every metric at that epoch."""

    metadata_features: bool
    epochs: int  # the best epoch (early stopping) or the fixed count
    precision_at_k: float
    curve: list[CurvePoint]
    metrics: Metrics
    scoring_seconds: float
    seconds: float
    worker: str = ""  # host:pid of the process that fitted it


def worker_name() -> str:
    """This process, as recorded per candidate: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Offload(Protocol):
    """Where the second candidate may be fitted meanwhile (:mod:`worker.candidates`)."""

    def offer(self) -> None:
        """Make the second candidate available to another worker."""

    def fraction(self) -> float:
        """The other worker's progress on it, 0-1."""

    def take(self) -> bool:
        """Claim it for this process; False when another worker has it."""

    def collect(self, data_hash: str, on_wait: CancelHook) -> CandidateResult | None:
        """Its result from the other worker; None when this process must fit it."""


@dataclass(frozen=True)
class Choice:
    """What :func:`choose` decided, with the figures the status shows."""

    epochs: int
    metadata_features: bool
    curve: list[CurvePoint]
    metrics: Metrics
    candidates: Candidates | None
    scoring_seconds: float
    results: list[CandidateResult] = field(default_factory=list)


def evaluation_fit(dataset: Dataset, params: TrainParams, test_mask: np.ndarray,
                   max_epochs: int, early_stopping: bool, on_epoch: Callable[[int], None],
                   should_cancel: CancelHook, start: ModelStart | None = None) -> CandidateResult:
    """Fit on the pairs outside ``test_mask`` and score the holdout as it trains.

    ``dataset`` decides the features (pass :meth:`Dataset.without_metadata`
    for the candidate without). With ``early_stopping`` the fit stops after a
    patience without improvement and the metrics are those of the best epoch;
    otherwise it trains ``max_epochs`` and reports the last.
    """
    started = time.perf_counter()
    hp, settings = params.hyperparameters, params.evaluation
    holdout = prepare_holdout(dataset, test_mask, settings, hp.random_state)
    curve_holdout = prepare_holdout(
        dataset, test_mask, replace(settings, max_sources=min(settings.max_sources,
                                                              CURVE_MAX_SOURCES)),
        hp.random_state)
    model = start(dataset) if start is not None else new_model(hp)
    interactions, weights = fit_inputs(dataset, hp, ~test_mask)
    stopper = EarlyStopping(max_epochs)
    curve: list[CurvePoint] = []
    best_reprs: tuple[np.ndarray, np.ndarray] | None = None
    interval, scoring = 1, 0.0
    for epoch in range(1, max_epochs + 1):
        epoch_started = time.perf_counter()
        fit_epoch(model, dataset, interactions, weights, params.threads, should_cancel)
        epoch_seconds = time.perf_counter() - epoch_started
        on_epoch(epoch)
        if epoch % interval and epoch != max_epochs:
            continue
        check_finite(model)
        scoring_started = time.perf_counter()
        reprs = representations(model, dataset)
        precision = holdout_precision(curve_holdout, *reprs)
        spent = time.perf_counter() - scoring_started
        scoring += spent
        interval = min(MAX_SCORE_INTERVAL, max(1, math.ceil(
            spent / max(SCORING_BUDGET * epoch_seconds, 1e-9))))
        curve.append({"epoch": epoch, "precision_at_k": precision})
        stop = stopper.update(epoch, precision)
        if stopper.best_epoch == epoch or not early_stopping:
            best_reprs = reprs
        if early_stopping and stop:
            break
    if best_reprs is None:  # max_epochs >= 1 and the last epoch is always scored
        best_reprs = representations(model, dataset)
    scoring_started = time.perf_counter()
    metrics = evaluate_holdout(holdout, *best_reprs)
    scoring += time.perf_counter() - scoring_started
    kept = stopper.best_epoch if early_stopping else max_epochs
    return CandidateResult(
        metadata_features=dataset.has_metadata, epochs=kept,
        precision_at_k=metrics["precision_at_k"], curve=curve, metrics=metrics,
        scoring_seconds=scoring, seconds=time.perf_counter() - started, worker=worker_name())


def choose(dataset: Dataset, params: TrainParams, test_mask: np.ndarray,
           on_progress: Callable[[float], None], should_cancel: CancelHook,
           start: ModelStart | None = None, offload: Offload | None = None) -> Choice:
    """Run the candidates and keep the better (see module docstring).

    With ``offload`` and two candidates, the one without metadata is offered
    to another worker while this process fits the one with; this process
    fits it too when nobody else took it (:mod:`worker.candidates`).
    """
    if params.metadata == "auto" and dataset.has_metadata:
        variants = [dataset, dataset.without_metadata()]
    elif params.metadata is not False and dataset.has_metadata:
        variants = [dataset]
    else:
        variants = [dataset.without_metadata()]
    max_epochs = params.max_epochs if params.epochs_auto else params.hyperparameters.epochs
    if offload is not None and len(variants) == 2:
        return decide(_shared_fits(variants, params, test_mask, max_epochs, on_progress,
                                   should_cancel, start, offload))
    results: list[CandidateResult] = []
    for i, variant in enumerate(variants):
        def on_epoch(epoch: int, done: int = i) -> None:
            on_progress((done + epoch / max_epochs) / len(variants))

        results.append(evaluation_fit(variant, params, test_mask, max_epochs,
                                      params.epochs_auto, on_epoch, should_cancel, start))
    on_progress(1.0)
    return decide(results)


def _shared_fits(variants: list[Dataset], params: TrainParams, test_mask: np.ndarray,
                 max_epochs: int, on_progress: Callable[[float], None],
                 should_cancel: CancelHook, start: ModelStart | None,
                 offload: Offload) -> list[CandidateResult]:
    """The first candidate here, the second wherever it was claimed (see :func:`choose`)."""
    offload.offer()
    own = evaluation_fit(
        variants[0], params, test_mask, max_epochs, params.epochs_auto,
        lambda epoch: on_progress((epoch / max_epochs + offload.fraction()) / 2),
        should_cancel, start)
    other: CandidateResult | None = None
    if not offload.take():
        def on_wait() -> bool:
            on_progress((1 + offload.fraction()) / 2)
            return False

        other = offload.collect(variants[0].data_hash(), on_wait)
    if other is None:
        other = evaluation_fit(
            variants[1], params, test_mask, max_epochs, params.epochs_auto,
            lambda epoch: on_progress((1 + epoch / max_epochs) / 2), should_cancel, start)
    on_progress(1.0)
    return [own, other]


def decide(results: list[CandidateResult]) -> Choice:
    """The better candidate; metadata is kept unless it lowers precision@k."""
    with_meta = [r for r in results if r.metadata_features]
    without = [r for r in results if not r.metadata_features]
    candidates: Candidates | None = None
    chosen = results[0]
    if with_meta and without:
        candidates = {"with_metadata": with_meta[0].precision_at_k,
                      "without_metadata": without[0].precision_at_k}
        chosen = (with_meta[0] if with_meta[0].precision_at_k >= without[0].precision_at_k
                  else without[0])
    return Choice(epochs=chosen.epochs, metadata_features=chosen.metadata_features,
                  curve=chosen.curve, metrics=chosen.metrics, candidates=candidates,
                  scoring_seconds=sum(r.scoring_seconds for r in results), results=results)
