"""One trial's work: the evaluation fit on the holdout split and its score, nothing else.

The only place a trial touches training and evaluation (:mod:`worker.training`,
:mod:`worker.evaluation`), so the quality issue's changes plug in here alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from shared.data.assembly import Dataset
from shared.errors import TrainingFailed
from worker.evaluation import holdout_split
from worker.fitting import CancelHook, TrainParams
from worker.selection import evaluation_fit


@dataclass(frozen=True)
class TrialResult:
    """A trial's score (None: the metric is not reported), epochs trained and seconds."""

    value: float | None
    epochs: int
    seconds: float


def run_trial(dataset: Dataset, params: TrainParams, metric: str,
              should_cancel: CancelHook) -> TrialResult:
    """Fit on the split (all but each source's most recent holdout share) and score it."""
    started = time.perf_counter()
    test_mask = holdout_split(dataset, params.evaluation.holdout)
    if not test_mask.any():
        raise TrainingFailed("No source has 2 or more interactions to hold out, so a trial "
                             "has nothing to score; a search needs more data per source.",
                             code="nothing_to_evaluate")
    # Epochs as ``"auto"`` chooses them: early stopping on this holdout, bounded by the
    # request's epochs (its ``max_epochs`` under "auto"); the metrics are the best epoch's.
    result = evaluation_fit(dataset, params, test_mask, params.hyperparameters.epochs,
                            params.epochs_auto, lambda _epoch: None, should_cancel)
    raw: Any = dict(result.metrics or {}).get(metric)
    value = None if raw is None else float(raw)
    return TrialResult(value=value, epochs=result.epochs,
                       seconds=time.perf_counter() - started)
