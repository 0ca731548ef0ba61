"""One evaluation fit: the holdout curve, early stopping, and the candidate's figures.

API.md, "Choices made from the data". An *evaluation fit* trains on the
holdout split epoch by epoch and scores precision@k on the held-out pairs as
it goes (:func:`worker.evaluation.holdout_precision`, one numpy pass); with
early stopping it stops once the curve has not improved for a patience and
keeps the best epoch. :func:`evaluation_fit` is one candidate and is pure, so
each candidate can run as its own task (:mod:`worker.candidates`) or beside
the other in this process (:mod:`worker.racing`); :mod:`worker.choice`
decides which candidates run where and keeps the better.

Early stopping is written here rather than taken from a library: LightFM has
none, and the loop must also report progress and honour cancellation
between epochs, which the training loop already does.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from shared.contracts import CurvePoint, Metrics
from shared.data.assembly import Dataset
from worker.evaluation import Holdout, evaluate_holdout, holdout_precision, prepare_holdout
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

if TYPE_CHECKING:
    from lightfm import LightFM

#: Patience: epochs without improvement before stopping, at least this many ...
PATIENCE_MIN = 3
#: ... or this share of the best epoch so far, when larger (later peaks are flatter).
PATIENCE_SHARE = 0.2
#: A new best must beat the old by this much (relative), so noise does not extend training.
MIN_IMPROVEMENT = 0.002
#: Curve scoring may cost at most this share of an epoch's time; past it, score every few
#: epochs (measured on the first pass: one scoring pass against one epoch).
SCORING_BUDGET = 0.1
#: Never score less often than every this many epochs.
MAX_SCORE_INTERVAL = 5
#: A scoring pass this quick is always affordable: the curve is then scored after every
#: epoch, however short the epochs (small data, where a pass of a few milliseconds still
#: costs more than 10% of an epoch, would otherwise be scored every 5 epochs and stop on two
#: points).
CHEAP_SCORING_SECONDS = 0.05
#: The curve scores at most this many sources (a fixed sample, so epochs compare), so that
#: scoring after every epoch stays cheap; the metadata comparison uses the run's
#: ``max_sources`` (default 10,000) at the kept epoch, and so do the reported metrics.
CURVE_MAX_SOURCES = 3_000
#: The second candidate stops early ("dropped") once its curve trails the first's at the
#: same epoch by more than this share ...
DROP_MARGIN = 0.05
#: ... at this many scored epochs in a row, and its best trails the first's best too.
DROP_AFTER = 3


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
    precision_at_k: float  # on the run's max_sources at that epoch: the comparison's figure
    curve: list[CurvePoint]
    metrics: Metrics | None  # every metric at that epoch; None until :func:`complete`
    scoring_seconds: float
    seconds: float
    worker: str = ""  # host:pid of the process that fitted it
    dropped: bool = False  # stopped early: it trailed the other candidate clearly
    #: (source_repr, target_repr) at the kept epoch, in this process only (never serialised)
    reprs: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)


def worker_name() -> str:
    """This process, as recorded per candidate: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Split:
    """What every evaluation fit of a run shares: the holdouts and the fit's pair matrices.

    None of it depends on the features, so the candidates with and without
    metadata use one :class:`Split` (:func:`prepare_split`).
    """

    test_mask: np.ndarray
    holdout: Holdout  # the run's max_sources: the comparison and the reported metrics
    curve: Holdout  # at most CURVE_MAX_SOURCES of them: the validation curve
    interactions: sp.coo_matrix
    weights: sp.coo_matrix | None


def prepare_split(dataset: Dataset, params: TrainParams, test_mask: np.ndarray) -> Split:
    """Sample the holdouts and build the training matrices of the pairs outside ``test_mask``."""
    hp, settings = params.hyperparameters, params.evaluation
    curve_settings = replace(settings, max_sources=min(settings.max_sources, CURVE_MAX_SOURCES))
    return Split(test_mask, prepare_holdout(dataset, test_mask, settings, hp.random_state),
                 prepare_holdout(dataset, test_mask, curve_settings, hp.random_state),
                 *fit_inputs(dataset, hp, ~test_mask))


@dataclass
class _Curve:
    """The state of one evaluation fit's curve as it trains."""

    stopper: EarlyStopping
    rival: list[CurvePoint] | None
    points: list[CurvePoint] = field(default_factory=list)
    best_reprs: tuple[np.ndarray, np.ndarray] | None = None
    scoring: float = 0.0
    trailing: int = 0

    drop: DropToken | None = None

    def trails(self, epoch: int) -> bool:
        """Whether this fit's best so far trails the rival's best up to ``epoch`` clearly.

        The rival's curve may still be growing (:func:`_concurrent_fits`): only
        its points up to ``epoch`` count, and of two fits racing at once only
        one can be dropped (``drop``).
        """
        earlier = [p["precision_at_k"] for p in list(self.rival or []) if p["epoch"] <= epoch]
        lags = bool(earlier) and self.stopper.best < max(earlier) * (1 - DROP_MARGIN)
        self.trailing = self.trailing + 1 if lags else 0
        return self.trailing >= DROP_AFTER and (self.drop is None or self.drop.take())


class DropToken:
    """Of two candidates fitted at once, only the first to trail clearly may be dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken = False

    def take(self) -> bool:
        """True the first time only."""
        with self._lock:
            taken, self._taken = self._taken, True
            return not taken


def evaluation_fit(dataset: Dataset, params: TrainParams, test_mask: np.ndarray,
                   max_epochs: int, early_stopping: bool, on_epoch: Callable[[int], None],
                   should_cancel: CancelHook, start: ModelStart | None = None,
                   split: Split | None = None, full_metrics: bool = True,
                   rival: list[CurvePoint] | None = None,
                   points: list[CurvePoint] | None = None,
                   drop: DropToken | None = None) -> CandidateResult:
    """Fit on the pairs outside ``test_mask`` and score the holdout as it trains.

    ``dataset`` decides the features (pass :meth:`Dataset.without_metadata`
    for the candidate without). With ``early_stopping`` the fit stops after a
    patience without improvement and keeps the best epoch; otherwise it trains
    ``max_epochs`` and reports the last. With a ``rival`` curve (the other
    candidate's), it also stops once it trails that curve clearly (``dropped``).
    ``full_metrics``: every metric now; otherwise precision@k alone, and the
    representations are kept for :func:`complete`. ``points``: the list the
    curve is appended to as it grows (the rival of a fit running at once).
    """
    started = time.perf_counter()
    split = split if split is not None else prepare_split(dataset, params, test_mask)
    model = start(dataset) if start is not None else new_model(params.hyperparameters)
    state = _Curve(EarlyStopping(max_epochs), rival if early_stopping else None,
                   points=points if points is not None else [], drop=drop)
    dropped = _train_scoring(model, dataset, params, split, state, early_stopping, on_epoch,
                             should_cancel)
    reprs = state.best_reprs if state.best_reprs is not None else representations(model, dataset)
    scoring_started = time.perf_counter()
    metrics = evaluate_holdout(split.holdout, *reprs) if full_metrics else None
    precision = (metrics["precision_at_k"] if metrics is not None
                 else holdout_precision(split.holdout, *reprs))
    state.scoring += time.perf_counter() - scoring_started
    kept = state.stopper.best_epoch if early_stopping else state.stopper.max_epochs
    return CandidateResult(
        metadata_features=dataset.has_metadata, epochs=kept, precision_at_k=precision,
        curve=state.points, metrics=metrics, scoring_seconds=state.scoring,
        seconds=time.perf_counter() - started, worker=worker_name(), dropped=dropped,
        reprs=None if full_metrics else reprs)


def _train_scoring(model: LightFM, dataset: Dataset, params: TrainParams, split: Split,
                   state: _Curve, early_stopping: bool, on_epoch: Callable[[int], None],
                   should_cancel: CancelHook) -> bool:
    """The epochs of :func:`evaluation_fit`, scoring the curve; True when it was dropped.

    The curve is scored after the first epoch, then every ``interval`` epochs,
    so that scoring costs at most ``SCORING_BUDGET`` of the fit's time (one
    pass against one epoch, as last measured); the last epoch is always scored.
    A pass under ``CHEAP_SCORING_SECONDS`` is affordable whatever the epoch's
    time: the next epoch is scored too.
    """
    max_epochs, interval = state.stopper.max_epochs, 1
    for epoch in range(1, max_epochs + 1):
        epoch_started = time.perf_counter()
        fit_epoch(model, dataset, split.interactions, split.weights, params.threads,
                  should_cancel)
        epoch_seconds = time.perf_counter() - epoch_started
        on_epoch(epoch)
        if epoch % interval and epoch != max_epochs:
            continue
        check_finite(model)
        scoring_started = time.perf_counter()
        reprs = representations(model, dataset)
        precision = holdout_precision(split.curve, *reprs)
        spent = time.perf_counter() - scoring_started
        state.scoring += spent
        interval = 1 if spent < CHEAP_SCORING_SECONDS else min(MAX_SCORE_INTERVAL, max(1, (
            math.ceil(spent / max(SCORING_BUDGET * epoch_seconds, 1e-9)))))
        state.points.append({"epoch": epoch, "precision_at_k": precision})
        stop = state.stopper.update(epoch, precision)
        if state.stopper.best_epoch == epoch or not early_stopping:
            state.best_reprs = reprs
        if state.rival is not None and state.trails(epoch):
            return True
        if early_stopping and stop:
            break
    return False


def complete(result: CandidateResult, split: Split) -> CandidateResult:
    """The result with every metric (the winner's: computed once, from its kept representations)."""
    if result.metrics is not None or result.reprs is None:
        return result
    started = time.perf_counter()
    metrics = evaluate_holdout(split.holdout, *result.reprs)
    metrics["precision_at_k"] = result.precision_at_k  # the same figure, rounded alike
    spent = time.perf_counter() - started
    return replace(result, metrics=metrics,
                   scoring_seconds=result.scoring_seconds + spent,
                   seconds=result.seconds + spent)
