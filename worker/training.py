"""The pure training function: LightFM fit one epoch at a time, with progress and cancel hooks.

No Celery here. :func:`train` fits the served model on every pair, then (when
evaluation is on) a second model on the holdout split and scores it with
:mod:`worker.evaluation`. It reports ``on_progress(phase, fraction)`` after
each epoch and asks ``should_cancel()`` between epochs. LightFM is imported
inside the functions, so importing this module in a prefork parent never
touches OpenMP (see DESIGN.md, "Known pitfalls").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import scipy.sparse as sp

from shared.contracts import HYPERPARAMETER_DEFAULTS, Metrics
from shared.data.assembly import Dataset
from shared.errors import ServiceError, TrainingFailed
from worker.evaluation import EvaluationSettings, evaluate, holdout_split

if TYPE_CHECKING:
    from lightfm import LightFM

TrainPhase = Literal["training", "evaluating"]
ProgressHook = Callable[[TrainPhase, float], None]
CancelHook = Callable[[], bool]


@dataclass(frozen=True)
class Hyperparameters:
    """LightFM's knobs (docs/api.md table); defaults are the documented ones."""

    loss: str = HYPERPARAMETER_DEFAULTS["loss"]
    no_components: int = HYPERPARAMETER_DEFAULTS["no_components"]
    epochs: int = HYPERPARAMETER_DEFAULTS["epochs"]
    learning_rate: float = HYPERPARAMETER_DEFAULTS["learning_rate"]
    item_alpha: float = HYPERPARAMETER_DEFAULTS["item_alpha"]
    user_alpha: float = HYPERPARAMETER_DEFAULTS["user_alpha"]
    max_sampled: int = HYPERPARAMETER_DEFAULTS["max_sampled"]
    random_state: int = HYPERPARAMETER_DEFAULTS["random_state"]


@dataclass(frozen=True)
class TrainParams:
    """Everything :func:`train` needs besides the data."""

    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    threads: int = 1


@dataclass(frozen=True)
class TrainedModel:
    """The served model's representations (see :mod:`shared.models.artifact`) and metrics."""

    source_repr: np.ndarray  # (n_sources, k+2) float32 [emb, bias, 1]
    target_repr: np.ndarray  # (n_targets, k+2) float32 [emb, 1, bias]
    source_feature_embeddings: np.ndarray | None  # (n_meta, k) float32
    source_feature_biases: np.ndarray | None  # (n_meta,) float32
    metrics: Metrics | None
    epoch_seconds: float
    evaluation_seconds: float = 0.0  # split, second fit and scoring together
    scoring_seconds: float = 0.0
    model: Any = None  # the fitted LightFM (its full state goes to storage for warm starts)


class TrainingCancelled(ServiceError):
    """A cancel request was seen between epochs."""

    status = 409
    code = "cancelled"


def _side(features: Any) -> sp.csr_matrix | None:
    return None if features is None else features.matrix


def representations(model: LightFM, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(source_repr, target_repr) so that ``source_repr @ target_repr.T`` = LightFM's predict."""

    def side(features: sp.csr_matrix | None, emb: np.ndarray, bias: np.ndarray,
             n: int) -> tuple[np.ndarray, np.ndarray]:
        if features is None:
            return emb[:n], bias[:n]
        return (np.asarray(features @ emb, dtype=np.float32),
                np.asarray(features @ bias, dtype=np.float32))

    s_emb, s_bias = side(_side(dataset.source_features), model.user_embeddings,
                         model.user_biases, dataset.n_sources)
    t_emb, t_bias = side(_side(dataset.target_features), model.item_embeddings,
                         model.item_biases, dataset.n_targets)
    ones_s = np.ones((dataset.n_sources, 1), dtype=np.float32)
    ones_t = np.ones((dataset.n_targets, 1), dtype=np.float32)
    source_repr = np.hstack([s_emb, s_bias[:, None], ones_s]).astype(np.float32)
    target_repr = np.hstack([t_emb, ones_t, t_bias[:, None]]).astype(np.float32)
    return source_repr, target_repr


def fit(
    dataset: Dataset,
    hp: Hyperparameters,
    threads: int,
    on_epoch: Callable[[int], None],
    should_cancel: CancelHook,
    mask: np.ndarray | None = None,
    start: Callable[[], LightFM] | None = None,
) -> LightFM:
    """Fit a LightFM model on the dataset's pairs (or the ``mask`` subset), epoch by epoch.

    ``start`` makes the model to continue from (a warm start, :mod:`worker.warm_start`).
    """
    from lightfm import LightFM

    model = start() if start is not None else LightFM(
        no_components=hp.no_components, loss=hp.loss, learning_rate=hp.learning_rate,
        item_alpha=hp.item_alpha, user_alpha=hp.user_alpha, max_sampled=hp.max_sampled,
        random_state=hp.random_state,
    )
    interactions = dataset.matrix(mask)
    weights = None if hp.loss == "warp-kos" or dataset.uniform_weights else (
        dataset.weight_matrix(mask))
    for epoch in range(hp.epochs):
        if should_cancel():
            raise TrainingCancelled("The run was cancelled.")
        try:
            model.fit_partial(
                interactions, user_features=_side(dataset.source_features),
                item_features=_side(dataset.target_features), sample_weight=weights,
                epochs=1, num_threads=threads,
            )
        except ValueError as exc:
            raise TrainingFailed(
                f"LightFM could not fit the model: {exc}. A lower learning_rate, or "
                "item_alpha/user_alpha closer to 0, usually helps.",
                code="training_diverged",
            ) from exc
        on_epoch(epoch + 1)
    if not (np.isfinite(model.user_embeddings).all() and np.isfinite(model.item_embeddings).all()):
        raise TrainingFailed(
            "The model diverged (its parameters are not finite); lower learning_rate.",
            code="training_diverged",
        )
    return model


def train(
    dataset: Dataset,
    params: TrainParams,
    on_progress: ProgressHook,
    should_cancel: CancelHook,
    start: Callable[[], LightFM] | None = None,
) -> TrainedModel:
    """Fit the served model on all pairs; then, unless holdout is 0, evaluate a split fit."""
    import time

    hp = params.hyperparameters
    started = time.perf_counter()
    model = fit(dataset, hp, params.threads,
                lambda epoch: on_progress("training", epoch / hp.epochs), should_cancel,
                start=start)
    epoch_seconds = (time.perf_counter() - started) / hp.epochs
    source_repr, target_repr = representations(model, dataset)
    feature_emb = feature_bias = None
    if dataset.source_features is not None:
        n = dataset.n_sources
        feature_emb = np.ascontiguousarray(model.user_embeddings[n:], dtype=np.float32)
        feature_bias = np.ascontiguousarray(model.user_biases[n:], dtype=np.float32)
    metrics: Metrics | None = None
    evaluation_started = time.perf_counter()
    scoring_seconds = 0.0
    if params.evaluation.holdout > 0:
        test_mask = holdout_split(dataset, params.evaluation.holdout)
        if test_mask.any():
            # the scoring pass is ~1 epoch's worth of work; count it as one more step
            steps = hp.epochs + 1
            split_model = fit(dataset, hp, params.threads,
                              lambda epoch: on_progress("evaluating", epoch / steps),
                              should_cancel, mask=~test_mask, start=start)
            split_source, split_target = representations(split_model, dataset)
            scoring_started = time.perf_counter()
            metrics = evaluate(dataset, test_mask, split_source, split_target,
                               params.evaluation, hp.random_state)
            scoring_seconds = time.perf_counter() - scoring_started
            on_progress("evaluating", 1.0)
    return TrainedModel(source_repr=source_repr, target_repr=target_repr,
                        source_feature_embeddings=feature_emb,
                        source_feature_biases=feature_bias, metrics=metrics,
                        epoch_seconds=epoch_seconds,
                        evaluation_seconds=time.perf_counter() - evaluation_started,
                        scoring_seconds=scoring_seconds, model=model)
