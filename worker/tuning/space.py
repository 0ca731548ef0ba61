"""A validated search space (:mod:`shared.runs.search`) as Optuna suggestions."""

from __future__ import annotations

from typing import Any

from shared.runs.search import DIMENSIONS


def suggest(trial: Any, space: dict[str, list[Any]]) -> dict[str, Any]:
    """Ask an Optuna trial for one value per searched hyperparameter (in the space's order)."""
    chosen: dict[str, Any] = {}
    for name, values in space.items():
        dim = DIMENSIONS[name]
        if dim.kind == "choice":
            chosen[name] = trial.suggest_categorical(name, list(values))
        elif dim.kind == "int":
            chosen[name] = int(trial.suggest_int(name, int(values[0]), int(values[1]),
                                                 log=dim.log))
        else:
            chosen[name] = float(trial.suggest_float(name, float(values[0]),
                                                     float(values[1]), log=dim.log))
    return chosen
