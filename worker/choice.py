"""Choices made from the data: which candidates are fitted, where, and which is kept.

API.md, "Choices made from the data". :func:`choose` fits the candidates
(with and without metadata features when ``"auto"`` compares them; one
otherwise), each an evaluation fit of :mod:`worker.selection`, and keeps the
better, metadata winning ties. Where they are fitted:

- offered to another worker as a task while this process fits the other
  (:mod:`worker.candidates`), when the host has the cores for both;
- else, with at least 2 threads, both at once in this process, the served
  fit starting early on the thread the first to finish frees
  (:mod:`worker.racing`);
- else one after the other, the second dropped early when it trails clearly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from shared.contracts import Candidates, CurvePoint, Metrics
from shared.data.assembly import Dataset
from worker.fitting import CancelHook, ModelStart, TrainParams
from worker.racing import EarlyServed, race
from worker.selection import CandidateResult, Split, complete, evaluation_fit, prepare_split


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
    #: The served fit started early with the winner's features (:mod:`worker.racing`), if any.
    early: EarlyServed | None = None


def choose(dataset: Dataset, params: TrainParams, test_mask: np.ndarray,
           on_progress: Callable[[float], None], should_cancel: CancelHook,
           start: ModelStart | None = None, offload: Offload | None = None) -> Choice:
    """Run the candidates and keep the better (see module docstring).

    With ``offload`` and two candidates, the one without metadata is offered
    to another worker while this process fits the one with; this process
    fits it too when nobody else took it (:mod:`worker.candidates`). Without
    ``offload`` and with at least 2 threads, this process fits both at once,
    each with half the threads, and starts the served fit early
    (:func:`worker.racing.race`); with 1 thread, one after the other. Every
    metric is computed for the winner alone; the loser only needs precision@k.
    """
    if params.metadata == "auto" and dataset.has_metadata:
        variants = [dataset, dataset.without_metadata()]
    elif params.metadata is not False and dataset.has_metadata:
        variants = [dataset]
    else:
        variants = [dataset.without_metadata()]
    max_epochs = params.max_epochs if params.epochs_auto else params.hyperparameters.epochs
    split = prepare_split(dataset, params, test_mask)
    early: EarlyServed | None = None
    if offload is not None and len(variants) == 2:
        results = _shared_fits(variants, params, split, max_epochs, on_progress, should_cancel,
                               start, offload)
    elif len(variants) == 2 and params.threads >= 2:
        results, early = race(variants, params, split, max_epochs, on_progress, should_cancel,
                              start)
    else:
        results = []
        for i, variant in enumerate(variants):
            def on_epoch(epoch: int, done: int = i) -> None:
                on_progress((done + epoch / max_epochs) / len(variants))

            results.append(evaluation_fit(
                variant, params, test_mask, max_epochs, params.epochs_auto, on_epoch,
                should_cancel, start, split=split, full_metrics=False,
                rival=results[0].curve if results else None))
    best = _winner(results)
    on_progress(1.0)
    choice = decide([complete(r, split) if r is best else r for r in results])
    if early is not None and early.metadata_features == choice.metadata_features and (
            early.epochs <= choice.epochs):
        choice = replace(choice, early=early)
    return choice


def _shared_fits(variants: list[Dataset], params: TrainParams, split: Split,
                 max_epochs: int, on_progress: Callable[[float], None],
                 should_cancel: CancelHook, start: ModelStart | None,
                 offload: Offload) -> list[CandidateResult]:
    """The first candidate here, the second wherever it was claimed (see :func:`choose`)."""
    offload.offer()
    own = evaluation_fit(
        variants[0], params, split.test_mask, max_epochs, params.epochs_auto,
        lambda epoch: on_progress((epoch / max_epochs + offload.fraction()) / 2),
        should_cancel, start, split=split, full_metrics=False)
    other: CandidateResult | None = None
    if not offload.take():
        def on_wait() -> bool:
            on_progress((1 + offload.fraction()) / 2)
            return False

        other = offload.collect(variants[0].data_hash(), on_wait)
    if other is None:
        other = evaluation_fit(
            variants[1], params, split.test_mask, max_epochs, params.epochs_auto,
            lambda epoch: on_progress((1 + epoch / max_epochs) / 2), should_cancel, start,
            split=split, full_metrics=False, rival=own.curve)
    return [own, other]


def _winner(results: list[CandidateResult]) -> CandidateResult:
    """The candidate kept: metadata unless it has the lower precision@k."""
    with_meta = [r for r in results if r.metadata_features]
    without = [r for r in results if not r.metadata_features]
    if with_meta and without and with_meta[0].precision_at_k < without[0].precision_at_k:
        return without[0]
    return results[0] if not with_meta else with_meta[0]


def decide(results: list[CandidateResult]) -> Choice:
    """The better candidate (:func:`_winner`), whose metrics must be complete."""
    with_meta = [r for r in results if r.metadata_features]
    without = [r for r in results if not r.metadata_features]
    candidates: Candidates | None = None
    if with_meta and without:
        candidates = {"with_metadata": with_meta[0].precision_at_k,
                      "without_metadata": without[0].precision_at_k}
    chosen = _winner(results)
    if chosen.metrics is None:
        raise ValueError("the chosen candidate's metrics were not computed (complete())")
    return Choice(epochs=chosen.epochs, metadata_features=chosen.metadata_features,
                  curve=chosen.curve, metrics=chosen.metrics, candidates=candidates,
                  scoring_seconds=sum(r.scoring_seconds for r in results), results=results)
