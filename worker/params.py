"""A run's stored parameters (the validated, defaults-resolved request) as typed options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.contracts import AUTO_EPOCHS_WITHOUT_HOLDOUT, HYPERPARAMETER_DEFAULTS
from worker.evaluation import EvaluationSettings
from worker.fitting import Hyperparameters, TrainParams


def train_params(params: Mapping[str, Any], threads: int) -> TrainParams:
    """Hyperparameters, evaluation settings and the two choices, defaults filled in.

    ``epochs`` is "auto" when stored so, or when ``epochs_auto`` is true (how
    the API stores it: ``epochs`` is then the bound); absent, it is the
    default ("auto"). ``use_metadata_features`` absent means "auto".
    """
    hp = dict(params.get("hyperparameters") or {})
    ev = dict(params.get("evaluation") or {})
    defaults = Hyperparameters()
    evd = EvaluationSettings()
    given = hp.get("epochs", HYPERPARAMETER_DEFAULTS["epochs"])
    epochs_auto = bool(hp.get("epochs_auto", given == "auto"))
    max_epochs = int(hp.get("max_epochs", HYPERPARAMETER_DEFAULTS["max_epochs"]))
    epochs = AUTO_EPOCHS_WITHOUT_HOLDOUT if given == "auto" else int(given)
    metadata = params.get("use_metadata_features", "auto")
    return TrainParams(
        epochs_auto=epochs_auto,
        max_epochs=max_epochs,
        metadata="auto" if metadata == "auto" else bool(metadata),
        hyperparameters=Hyperparameters(
            loss=str(hp.get("loss", defaults.loss)),
            no_components=int(hp.get("no_components", defaults.no_components)),
            epochs=epochs,
            learning_rate=float(hp.get("learning_rate", defaults.learning_rate)),
            item_alpha=float(hp.get("item_alpha", defaults.item_alpha)),
            user_alpha=float(hp.get("user_alpha", defaults.user_alpha)),
            max_sampled=int(hp.get("max_sampled", defaults.max_sampled)),
            random_state=int(hp.get("random_state", defaults.random_state)),
        ),
        evaluation=EvaluationSettings(
            holdout=float(ev.get("holdout", evd.holdout)),
            max_sources=int(ev.get("max_sources", evd.max_sources)),
            k=int(ev.get("k", evd.k)),
        ),
        threads=threads,
    )
