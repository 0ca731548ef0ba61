"""Warm starts: grow a parent version's LightFM state to a new dataset and continue from it.

LightFM keeps its whole state in twelve float32 arrays sized by feature count
(identity plus metadata features, see DESIGN.md "Warm start"). LightFM has no
API to add rows, so :func:`grow` does it: every row the parent learned is
copied by name (``id:<entity>`` / ``f:<feature>``, :mod:`shared.models.state`)
to its new index, and new rows are initialised exactly as LightFM's own
``_initialize`` does: embeddings ``(rand - 0.5) / no_components``, biases and
momenta zero, gradient accumulators one under adagrad (zero under adadelta).
``fit_partial`` then continues, because the shapes match its feature matrices.
LightFM is imported inside the functions (see :mod:`worker.training`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.data.assembly import Dataset
from shared.data.feature_matrix import SideFeatures
from shared.errors import TrainingFailed
from shared.models.state import PARTS, SIDES, STATE_ARRAYS, ModelState, load_state
from shared.runs.ref import RunRef
from shared.storage import Storage

if TYPE_CHECKING:
    from lightfm import LightFM

    from worker.fitting import Hyperparameters


def feature_names(ids: np.ndarray, features: SideFeatures | None) -> np.ndarray:
    """The name of every row of one side's LightFM arrays, in row order."""
    identity = np.char.add("id:", ids.astype(str))
    if features is None:
        return identity
    meta = np.char.add("f:", np.asarray(features.names, dtype=str)) if features.names else (
        np.empty(0, dtype=identity.dtype))
    return np.concatenate([identity, meta])


def state_of(model: LightFM, dataset: Dataset, loss: str) -> ModelState:
    """The fitted model's full state with the row names of ``dataset``."""
    arrays = {name: np.asarray(getattr(model, name), dtype=np.float32) for name in STATE_ARRAYS}
    return ModelState(
        arrays=arrays,
        user_feature_names=feature_names(dataset.source_ids, dataset.source_features),
        item_feature_names=feature_names(dataset.target_ids, dataset.target_features),
        loss=loss, no_components=int(model.no_components),
        learning_schedule=str(model.learning_schedule),
    )


def match_rows(parent: np.ndarray, names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(new rows, parent rows) of the names both arrays hold; vectorised, no Python loop."""
    if parent.size == 0 or names.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    order = np.argsort(parent, kind="stable")
    ordered = parent[order]
    pos = np.minimum(np.searchsorted(ordered, names), ordered.size - 1)
    hit = ordered[pos] == names
    return np.flatnonzero(hit), order[pos[hit]]


def _grow_side(model: LightFM, parent: ModelState, side: str, names: np.ndarray,
               adagrad: bool) -> int:
    """Set the six arrays of ``side`` on ``model``; returns how many rows came from the parent."""
    k = model.no_components
    n = names.shape[0]
    parent_names = parent.user_feature_names if side == "user" else parent.item_feature_names
    new_rows, old_rows = match_rows(parent_names, names)
    fresh = {
        "embeddings": ((model.random_state.rand(n, k) - 0.5) / k).astype(np.float32),
        "embedding_gradients": np.full((n, k), 1.0 if adagrad else 0.0, dtype=np.float32),
        "embedding_momentum": np.zeros((n, k), dtype=np.float32),
        "biases": np.zeros(n, dtype=np.float32),
        "bias_gradients": np.full(n, 1.0 if adagrad else 0.0, dtype=np.float32),
        "bias_momentum": np.zeros(n, dtype=np.float32),
    }
    for part in PARTS:
        array = fresh[part]
        array[new_rows] = parent.arrays[f"{side}_{part}"][old_rows]
        setattr(model, f"{side}_{part}", array)
    return int(new_rows.size)


def grow(parent: ModelState, dataset: Dataset, hp: Hyperparameters) -> LightFM:
    """A LightFM model for ``dataset`` whose known rows are the parent's, ready to continue."""
    from lightfm import LightFM

    if hp.loss != parent.loss or hp.no_components != parent.no_components:
        raise ValueError("a warm start keeps the parent's loss and no_components")
    model = LightFM(
        no_components=hp.no_components, loss=hp.loss, learning_rate=hp.learning_rate,
        item_alpha=hp.item_alpha, user_alpha=hp.user_alpha, max_sampled=hp.max_sampled,
        learning_schedule=parent.learning_schedule, random_state=hp.random_state,
    )
    adagrad = parent.learning_schedule == "adagrad"
    # items first, as LightFM's _initialize draws them, so a seed gives the same new rows
    names = {"item": feature_names(dataset.target_ids, dataset.target_features),
             "user": feature_names(dataset.source_ids, dataset.source_features)}
    for side in SIDES:
        _grow_side(model, parent, side, names[side], adagrad)
    return model


def starter(parent: ModelState, hp: Hyperparameters) -> Callable[[Dataset], LightFM]:
    """A factory of grown models, one per fit (served, holdout, with or without metadata),
    each grown to the dataset it fits: rows are matched by name, so any variant works."""
    return lambda dataset: grow(parent, dataset, hp)


def parent_version(params: Mapping[str, Any]) -> int | None:
    """The version a run warm-starts from (``params["warm_start"]``), or None."""
    warm = params.get("warm_start")
    if isinstance(warm, Mapping) and warm.get("parent_version"):
        return int(warm["parent_version"])
    return None


def from_parent(storage: Storage, ref: RunRef, params: Mapping[str, Any],
                hp: Hyperparameters) -> Callable[[Dataset], LightFM] | None:
    """The model factory of a warm-started run, None for a fresh one."""
    version = parent_version(params)
    if version is None:
        return None
    try:
        parent = load_state(storage, ref.tenant, ref.model_id, version)
    except FileNotFoundError as exc:
        raise TrainingFailed(
            f"Version {version} of '{ref.model_id}', which this run warm-starts from, is no "
            "longer on storage; train again (with or without warm_start).",
            code="no_model_to_warm_start") from exc
    return starter(parent, hp)
