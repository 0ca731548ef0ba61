"""The pure training function: LightFM fit one epoch at a time, with progress and cancel hooks.

No Celery here. :func:`train` fits the served model on every pair and (when
evaluation is on) a second model on the holdout split, scored with
:mod:`worker.evaluation`; with ``epochs: "auto"`` or ``use_metadata_features:
"auto"`` the evaluation fits come first and choose (:mod:`worker.choice`).
It reports ``on_progress(phase, fraction)`` after each epoch and asks
``should_cancel()`` between epochs. LightFM is imported inside the
functions, so importing this module in a prefork parent never touches
OpenMP (see DESIGN.md, "Known pitfalls").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from shared.contracts import (
    AUTO_EPOCHS_WITHOUT_HOLDOUT,
    Candidates,
    CurvePoint,
    Metrics,
    TrainingChoice,
)
from shared.data.assembly import Dataset
from worker.evaluation import holdout_split
from worker.fitting import (
    CancelHook,
    Hyperparameters,
    ModelStart,
    TrainParams,
    fit,
    representations,
)

if TYPE_CHECKING:
    from lightfm import LightFM

    from worker.choice import Choice, Offload
    from worker.racing import EarlyServed

TrainPhase = Literal["training", "evaluating"]
ProgressHook = Callable[[TrainPhase, float], None]


@dataclass(frozen=True)
class TrainedModel:
    """The served model's representations (see :mod:`shared.models.artifact`) and metrics."""

    source_repr: np.ndarray  # (n_sources, k+2) float32 [emb, bias, 1]
    target_repr: np.ndarray  # (n_targets, k+2) float32 [emb, 1, bias]
    source_feature_embeddings: np.ndarray | None  # (n_meta, k) float32
    source_feature_biases: np.ndarray | None  # (n_meta,) float32
    metrics: Metrics | None
    epoch_seconds: float
    #: Metadata-feature rows of the target side (new targets, similar items of unseen ones).
    target_feature_embeddings: np.ndarray | None = None  # (n_target_meta, k) float32
    target_feature_biases: np.ndarray | None = None  # (n_target_meta,) float32
    evaluation_seconds: float = 0.0  # split, evaluation fits and scoring together
    scoring_seconds: float = 0.0
    epochs: int = 0  # epochs the served fit trained
    metadata_features: bool = False  # whether the served fit used metadata features
    curve: list[CurvePoint] = field(default_factory=list)  # of the chosen evaluation fit
    candidates: Candidates | None = None  # only when "auto" compared with and without
    #: Per candidate ("with_metadata"/"without_metadata"): the process that fitted it
    #: (``host:pid``), its wall seconds, the epochs it fitted and whether it was dropped
    #: early for trailing the other (the run record's ``candidate_fits``).
    candidate_fits: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the fitted LightFM (its full state goes to storage for warm starts, worker/warm_start.py)
    model: Any = None

    def training_choice(self) -> TrainingChoice:
        """The status object's ``training`` field (API.md, "Choices made from the data")."""
        choice: TrainingChoice = {"epochs": self.epochs,
                                  "metadata_features": self.metadata_features,
                                  "curve": list(self.curve)}
        if self.candidates is not None:
            choice["candidates"] = self.candidates
        return choice


def _snapshot(model: LightFM, dataset: Dataset) -> _Snapshot:
    source_repr, target_repr = representations(model, dataset)
    feature_emb = feature_bias = target_emb = target_bias = None
    if dataset.source_features is not None:
        n = dataset.n_sources
        feature_emb = np.ascontiguousarray(model.user_embeddings[n:], dtype=np.float32)
        feature_bias = np.ascontiguousarray(model.user_biases[n:], dtype=np.float32)
    if dataset.target_features is not None:
        n = dataset.n_targets
        target_emb = np.ascontiguousarray(model.item_embeddings[n:], dtype=np.float32)
        target_bias = np.ascontiguousarray(model.item_biases[n:], dtype=np.float32)
    return _Snapshot(source_repr, target_repr, feature_emb, feature_bias, target_emb,
                     target_bias)


@dataclass(frozen=True)
class _Snapshot:
    source_repr: np.ndarray
    target_repr: np.ndarray
    feature_embeddings: np.ndarray | None
    feature_biases: np.ndarray | None
    target_feature_embeddings: np.ndarray | None = None
    target_feature_biases: np.ndarray | None = None
    model: Any = None


def _served(dataset: Dataset, hp: Hyperparameters, epochs: int, threads: int,
            on_progress: Callable[[float], None], should_cancel: CancelHook,
            start: ModelStart | None = None,
            early: EarlyServed | None = None) -> tuple[_Snapshot, float]:
    """The served fit on all pairs: (its representations, seconds per epoch).

    ``early``: the served fit started during the choice (:mod:`worker.racing`),
    continued here to ``epochs`` (its seconds count in the figure per epoch).
    """
    import time

    started = time.perf_counter()
    done = 0 if early is None else early.epochs
    model = fit(dataset, replace(hp, epochs=epochs - done), threads,
                lambda epoch: on_progress((done + epoch) / epochs), should_cancel,
                start=start if early is None else (lambda _data: early.model))
    if done == epochs:  # every epoch was trained early
        on_progress(1.0)
    seconds = time.perf_counter() - started + (0.0 if early is None else early.seconds)
    return replace(_snapshot(model, dataset), model=model), seconds / epochs


def train(
    dataset: Dataset,
    params: TrainParams,
    on_progress: ProgressHook,
    should_cancel: CancelHook,
    start: ModelStart | None = None,
    offload: Offload | None = None,
) -> TrainedModel:
    """Fit the served model on all pairs; unless holdout is 0, evaluate on a split fit.

    With ``epochs_auto`` or ``metadata == "auto"`` (and a holdout), the
    evaluation fits come first (:func:`worker.choice.choose`) and the served
    fit then trains the chosen epochs with the chosen features (``offload``: see
    ``choose``). Otherwise one evaluation fit of the served fit's epochs follows.
    """
    import time

    from worker.choice import choose
    from worker.selection import evaluation_fit

    hp = params.hyperparameters
    use_metadata = params.metadata is not False and dataset.has_metadata
    data = dataset if use_metadata else dataset.without_metadata()
    holdout = params.evaluation.holdout
    test_mask = holdout_split(dataset, holdout) if holdout > 0 else None
    has_test = test_mask is not None and bool(test_mask.any())
    auto = has_test and (params.epochs_auto or (params.metadata == "auto" and use_metadata))
    evaluation_started = time.perf_counter()
    if auto and test_mask is not None:
        choice = choose(dataset, params, test_mask,
                        lambda f: on_progress("evaluating", f), should_cancel, start=start,
                        offload=offload)
        evaluation_seconds = time.perf_counter() - evaluation_started
        data = dataset if choice.metadata_features else dataset.without_metadata()
        snapshot, epoch_seconds = _served(data, hp, choice.epochs, params.threads,
                                          lambda f: on_progress("training", f), should_cancel,
                                          start, choice.early)
        return replace(
            _trained(snapshot, choice.metrics, epoch_seconds, evaluation_seconds,
                     choice.scoring_seconds, choice.epochs, choice.metadata_features,
                     choice.curve, choice.candidates),
            candidate_fits=_candidate_fits(choice))
    epochs = hp.epochs
    if params.epochs_auto:  # no holdout to stop on (API.md): a fixed count
        epochs = AUTO_EPOCHS_WITHOUT_HOLDOUT
    snapshot, epoch_seconds = _served(data, hp, epochs, params.threads,
                                      lambda f: on_progress("training", f), should_cancel, start)
    evaluation_started = time.perf_counter()
    metrics: Metrics | None = None
    curve: list[CurvePoint] = []
    scoring_seconds = 0.0
    if has_test and test_mask is not None:
        steps = epochs + 1  # the scoring pass is ~1 epoch's worth of work
        result = evaluation_fit(data, params, test_mask, epochs, early_stopping=False,
                                on_epoch=lambda e: on_progress("evaluating", e / steps),
                                should_cancel=should_cancel, start=start)
        metrics, curve, scoring_seconds = result.metrics, result.curve, result.scoring_seconds
        on_progress("evaluating", 1.0)
    return _trained(snapshot, metrics, epoch_seconds, time.perf_counter() - evaluation_started,
                    scoring_seconds, epochs, use_metadata, curve, None)


def _candidate_fits(choice: Choice) -> dict[str, dict[str, Any]]:
    return {"with_metadata" if r.metadata_features else "without_metadata": {
        "worker": r.worker, "seconds": round(r.seconds, 3),
        "epochs_fitted": r.curve[-1]["epoch"] if r.curve else 0, "dropped": r.dropped}
        for r in choice.results}


def _trained(snapshot: _Snapshot, metrics: Metrics | None, epoch_seconds: float,
             evaluation_seconds: float, scoring_seconds: float, epochs: int,
             metadata_features: bool, curve: list[CurvePoint],
             candidates: Candidates | None) -> TrainedModel:
    return TrainedModel(
        source_repr=snapshot.source_repr, target_repr=snapshot.target_repr,
        source_feature_embeddings=snapshot.feature_embeddings,
        source_feature_biases=snapshot.feature_biases, metrics=metrics,
        target_feature_embeddings=snapshot.target_feature_embeddings,
        target_feature_biases=snapshot.target_feature_biases,
        epoch_seconds=epoch_seconds, evaluation_seconds=evaluation_seconds,
        scoring_seconds=scoring_seconds, epochs=epochs, metadata_features=metadata_features,
        curve=curve, candidates=candidates, model=snapshot.model)
