"""A run's stored parameters (the validated, defaults-resolved request) as typed options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.evaluation import EvaluationSettings
from worker.training import Hyperparameters, TrainParams


def train_params(params: Mapping[str, Any], threads: int) -> TrainParams:
    """Hyperparameters and evaluation settings, defaults filled in."""
    hp = dict(params.get("hyperparameters") or {})
    ev = dict(params.get("evaluation") or {})
    defaults = Hyperparameters()
    evd = EvaluationSettings()
    return TrainParams(
        hyperparameters=Hyperparameters(
            loss=str(hp.get("loss", defaults.loss)),
            no_components=int(hp.get("no_components", defaults.no_components)),
            epochs=int(hp.get("epochs", defaults.epochs)),
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
