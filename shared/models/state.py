"""A version's full LightFM state on storage: what a warm start continues from.

Layout, beside the served artifact (:mod:`shared.models.artifact`) in
``storage.model_dir(tenant, model_id, version)``::

    state/user_embeddings.npy ...     LightFM's twelve float32 arrays, by attribute name
    state/user_feature_names.npy      numpy unicode, one name per row of the user arrays
    state/item_feature_names.npy      numpy unicode, one name per row of the item arrays
    state/state.json                  loss, no_components, learning_schedule (written last)

Row names are ``id:<entity id>`` for identity features and ``f:<feature name>`` for
metadata features, so a warm start can find every learned row by name however the
indices move. Arrays and JSON only: never a pickle, and loaded with
``allow_pickle=False``. The state is written before the artifact's manifest, so a
version that serves always has it (versions trained before warm starts existed
have none: :func:`has_state` says so).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.storage import Storage, model_dir

SIDES = ("item", "user")
PARTS = ("embeddings", "embedding_gradients", "embedding_momentum", "biases",
         "bias_gradients", "bias_momentum")
#: LightFM's attribute names of its twelve state arrays.
STATE_ARRAYS = tuple(f"{side}_{part}" for side in SIDES for part in PARTS)
STATE_JSON = "state.json"
STATE_FORMAT = 1


@dataclass(frozen=True)
class ModelState:
    """LightFM's twelve arrays, the row names of each side, and the settings they need."""

    arrays: dict[str, np.ndarray]
    user_feature_names: np.ndarray  # (n_user_features,) <U
    item_feature_names: np.ndarray  # (n_item_features,) <U
    loss: str
    no_components: int
    learning_schedule: str = "adagrad"


def _state_dir(tenant: str, model_id: str, version: int) -> str:
    return f"{model_dir(tenant, model_id, version)}/state"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def save_state(storage: Storage, tenant: str, model_id: str, version: int,
               state: ModelState) -> None:
    """Write every array, then ``state.json`` (each file atomically)."""
    base = _state_dir(tenant, model_id, version)
    missing = set(STATE_ARRAYS) - set(state.arrays)
    if missing:
        raise ValueError(f"model state lacks {sorted(missing)}")
    for name in STATE_ARRAYS:
        storage.put_bytes(f"{base}/{name}.npy", _npy(state.arrays[name]))
    storage.put_bytes(f"{base}/user_feature_names.npy", _npy(state.user_feature_names))
    storage.put_bytes(f"{base}/item_feature_names.npy", _npy(state.item_feature_names))
    meta = {"format": STATE_FORMAT, "loss": state.loss, "no_components": state.no_components,
            "learning_schedule": state.learning_schedule}
    storage.put_bytes(f"{base}/{STATE_JSON}", json.dumps(meta).encode("utf-8"))


def has_state(storage: Storage, tenant: str, model_id: str, version: int) -> bool:
    """Whether the version carries a complete state (its ``state.json`` exists)."""
    return storage.exists(f"{_state_dir(tenant, model_id, version)}/{STATE_JSON}")


def state_info(storage: Storage, tenant: str, model_id: str, version: int) -> dict[str, Any]:
    """The version's ``state.json`` (loss, no_components, learning_schedule)."""
    raw = storage.get_bytes(f"{_state_dir(tenant, model_id, version)}/{STATE_JSON}")
    info: dict[str, Any] = json.loads(raw)
    return info


def _load(storage: Storage, rel: str) -> np.ndarray:
    array: np.ndarray = np.load(io.BytesIO(storage.get_bytes(rel)), allow_pickle=False)
    return array


def load_state(storage: Storage, tenant: str, model_id: str, version: int) -> ModelState:
    """Read a version's state (FileNotFoundError when it has none)."""
    base = _state_dir(tenant, model_id, version)
    info = state_info(storage, tenant, model_id, version)
    arrays = {name: _load(storage, f"{base}/{name}.npy") for name in STATE_ARRAYS}
    return ModelState(
        arrays=arrays,
        user_feature_names=_load(storage, f"{base}/user_feature_names.npy"),
        item_feature_names=_load(storage, f"{base}/item_feature_names.npy"),
        loss=str(info["loss"]), no_components=int(info["no_components"]),
        learning_schedule=str(info.get("learning_schedule", "adagrad")),
    )
