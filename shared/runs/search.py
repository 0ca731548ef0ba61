"""What a search may vary, and its defaults (docs/tuning.md): shared by the API and the trials.

The API validates ``search.space`` against :data:`DIMENSIONS` without importing
Optuna; the worker turns the validated space into Optuna distributions
(:mod:`worker.tuning.space`). Pure data and checks, no Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Metrics a search may maximise (every one is "higher is better"). ``ndcg_at_k`` and
#: ``map_at_k`` come with the quality issue (#13); until the evaluation reports them a
#: trial on them fails with a message saying so.
METRICS = ("precision_at_k", "recall_at_k", "ndcg_at_k", "map_at_k", "auc")
DEFAULT_METRIC = "precision_at_k"
DEFAULT_TRIALS = 20
MAX_TRIALS = 200


@dataclass(frozen=True)
class Dimension:
    """One hyperparameter a search may vary: its kind and the bounds a range must keep."""

    kind: str  # "int", "float" or "choice"
    low: float = 0.0
    high: float = 0.0
    log: bool = False  # searched on a log scale (then a range's low must be > 0)
    low_open: bool = False  # low itself is not allowed (learning_rate > 0)
    high_open: bool = False  # high itself is not allowed (alphas < 1)
    choices: tuple[Any, ...] = ()


DIMENSIONS: dict[str, Dimension] = {
    "loss": Dimension("choice", choices=("warp", "bpr", "warp-kos")),
    "no_components": Dimension("int", 1, 512),
    "learning_rate": Dimension("float", 0.0, 1.0, log=True, low_open=True),
    "item_alpha": Dimension("float", 0.0, 1.0, log=True, high_open=True),
    "user_alpha": Dimension("float", 0.0, 1.0, log=True, high_open=True),
    "max_sampled": Dimension("int", 1, 1000),
    "use_metadata_features": Dimension("choice", choices=(True, False)),
}

#: The space searched when a request names none: components, learning rate, sampling and
#: regularisation around the defaults, loss and metadata features as requested.
DEFAULT_SPACE: dict[str, list[Any]] = {
    "no_components": [16, 128],
    "learning_rate": [0.01, 0.2],
    "max_sampled": [5, 40],
    "item_alpha": [1e-8, 1e-5],
    "user_alpha": [1e-8, 1e-5],
}


def _check_range(name: str, dim: Dimension, values: list[Any]) -> str | None:
    if len(values) != 2 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return f"{name} takes a range: [low, high] numbers"
    if not all(abs(v) < 1e300 for v in values):
        return f"{name}: the bounds are out of range"
    low, high = float(values[0]), float(values[1])
    if dim.kind == "int" and not all(float(v).is_integer() for v in values):
        return f"{name} takes whole numbers"
    if not low <= high:
        return f"{name}: low must not be above high"
    below = low <= dim.low if dim.low_open else low < dim.low
    above = high >= dim.high if dim.high_open else high > dim.high
    if below or above:
        return f"{name} must lie within the training limits ({dim.low:g} to {dim.high:g})"
    if dim.log and low <= 0:
        return f"{name} is searched on a log scale: low must be above 0"
    return None


def space_errors(space: dict[str, Any]) -> dict[str, str]:
    """Problems of a requested space, by hyperparameter (empty when it is valid)."""
    errors: dict[str, str] = {}
    if not space:
        return {"space": "name at least one hyperparameter, or leave space out"}
    for name, values in space.items():
        dim = DIMENSIONS.get(name)
        if dim is None:
            errors[name] = f"cannot be searched; searchable: {', '.join(DIMENSIONS)}"
        elif not isinstance(values, list) or not values:
            errors[name] = "takes a non-empty list"
        elif dim.kind == "choice":
            bad = [v for v in values if v not in dim.choices
                   or type(v) is not type(dim.choices[0])]
            if bad:
                errors[name] = f"choices must be among {list(dim.choices)}"
        else:
            problem = _check_range(name, dim, values)
            if problem:
                errors[name] = problem
    return errors


def default_trial(space: dict[str, list[Any]], params: dict[str, Any]) -> dict[str, Any]:
    """The run's own parameters, where they lie inside ``space`` (the search's first trial,
    so the best found is never worse on the holdout than what the request alone gives)."""
    hp = params.get("hyperparameters") or {}
    chosen: dict[str, Any] = {}
    for name, values in space.items():
        value = params.get(name) if name == "use_metadata_features" else hp.get(name)
        if value is None:
            continue
        if DIMENSIONS[name].kind == "choice":
            if value in values:
                chosen[name] = value
        elif values[0] <= value <= values[1]:
            chosen[name] = value
    return chosen
