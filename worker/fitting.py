"""LightFM primitives: hyperparameters, a fresh model, one epoch, representations.

No Celery and no choices here: :mod:`worker.training` (the served fit) and
:mod:`worker.selection` (evaluation fits that choose epochs and features) both
build on these. LightFM is imported inside the functions, so importing this
module in a prefork parent never touches OpenMP (see DESIGN.md, "Known pitfalls").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import scipy.sparse as sp

from shared.contracts import HYPERPARAMETER_DEFAULTS
from shared.data.assembly import Dataset
from shared.errors import ServiceError, TrainingFailed
from worker.evaluation import EvaluationSettings

if TYPE_CHECKING:
    from lightfm import LightFM

CancelHook = Callable[[], bool]
#: Makes the model a fit continues from, for the dataset it fits (a warm start,
#: :mod:`worker.warm_start`); None: a fresh model.
ModelStart = Callable[[Dataset], "LightFM"]


@dataclass(frozen=True)
class Hyperparameters:
    """LightFM's knobs (docs/api.md table); defaults are the documented ones, except ``epochs``.

    ``epochs`` is a fixed count here; the service's default ``"auto"`` is
    :attr:`TrainParams.epochs_auto` (the stored ``epochs`` is then its bound).
    """

    loss: str = HYPERPARAMETER_DEFAULTS["loss"]
    no_components: int = HYPERPARAMETER_DEFAULTS["no_components"]
    epochs: int = 10
    learning_rate: float = HYPERPARAMETER_DEFAULTS["learning_rate"]
    item_alpha: float = HYPERPARAMETER_DEFAULTS["item_alpha"]
    user_alpha: float = HYPERPARAMETER_DEFAULTS["user_alpha"]
    max_sampled: int = HYPERPARAMETER_DEFAULTS["max_sampled"]
    random_state: int = HYPERPARAMETER_DEFAULTS["random_state"]


@dataclass(frozen=True)
class TrainParams:
    """Everything :func:`train` needs besides the data.

    The defaults here are a fixed setting (LightFM called directly); the
    service's defaults (``"auto"`` for both choices) come from
    :func:`worker.params.train_params`.
    """

    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    threads: int = 1
    #: Stop on the holdout (docs/api.md ``epochs: "auto"``), at most ``max_epochs``.
    epochs_auto: bool = False
    max_epochs: int = HYPERPARAMETER_DEFAULTS["max_epochs"]
    #: True, False, or "auto": compare both on the holdout, keep metadata unless it loses.
    metadata: bool | Literal["auto"] = True


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


def new_model(hp: Hyperparameters) -> LightFM:
    """An untrained LightFM model with the run's hyperparameters."""
    from lightfm import LightFM

    return LightFM(
        no_components=hp.no_components, loss=hp.loss, learning_rate=hp.learning_rate,
        item_alpha=hp.item_alpha, user_alpha=hp.user_alpha, max_sampled=hp.max_sampled,
        random_state=hp.random_state,
    )


def fit_inputs(dataset: Dataset, hp: Hyperparameters,
               mask: np.ndarray | None) -> tuple[sp.coo_matrix, sp.coo_matrix | None]:
    """(interactions, sample weights or None) of the pairs (or the ``mask`` subset)."""
    weights = None if hp.loss == "warp-kos" or dataset.uniform_weights else (
        dataset.weight_matrix(mask))
    return dataset.matrix(mask), weights


def fit_epoch(model: LightFM, dataset: Dataset, interactions: sp.coo_matrix,
              weights: sp.coo_matrix | None, threads: int, should_cancel: CancelHook) -> None:
    """One epoch of ``fit_partial``; cancel is checked before it, LightFM errors mapped."""
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


def check_finite(model: LightFM) -> None:
    """TrainingFailed when the parameters are no longer finite."""
    if not (np.isfinite(model.user_embeddings).all() and np.isfinite(model.item_embeddings).all()):
        raise TrainingFailed(
            "The model diverged (its parameters are not finite); lower learning_rate.",
            code="training_diverged",
        )


def fit(
    dataset: Dataset,
    hp: Hyperparameters,
    threads: int,
    on_epoch: Callable[[int], None],
    should_cancel: CancelHook,
    mask: np.ndarray | None = None,
    start: ModelStart | None = None,
) -> LightFM:
    """Fit a LightFM model on the dataset's pairs (or the ``mask`` subset), epoch by epoch."""
    model = start(dataset) if start is not None else new_model(hp)
    interactions, weights = fit_inputs(dataset, hp, mask)
    for epoch in range(hp.epochs):
        fit_epoch(model, dataset, interactions, weights, threads, should_cancel)
        on_epoch(epoch + 1)
    check_finite(model)
    return model
