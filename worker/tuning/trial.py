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
from worker.evaluation import evaluate, holdout_split
from worker.training import CancelHook, TrainParams, fit, representations


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
    hp = params.hyperparameters
    # TODO(#13, branch ``quality``): choose the epochs as ``epochs: "auto"`` does, by early
    # stopping on this holdout inside worker.training.train, and return the chosen count
    # from TrainedModel instead of the request's fixed epochs.
    model = fit(dataset, hp, params.threads, lambda _epoch: None, should_cancel,
                mask=~test_mask)
    source_repr, target_repr = representations(model, dataset)
    metrics = evaluate(dataset, test_mask, source_repr, target_repr, params.evaluation,
                       hp.random_state)
    raw: Any = dict(metrics).get(metric)  # ndcg_at_k, map_at_k: reported once #13 lands
    value = None if raw is None else float(raw)
    return TrialResult(value=value, epochs=hp.epochs, seconds=time.perf_counter() - started)
