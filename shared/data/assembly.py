"""Selected data to LightFM inputs: index maps, merged interaction matrix, feature matrices.

Vectorised with pyarrow and numpy; the only Python loops are per interaction
type (weights), per metadata key (feature columns) and, when the metadata of
one side cannot be read as one typed table (a key holding a string in one
entity and a number in another, say), per entity of that side with metadata.

Rules (docs/api.md, "Training"):

- sources are the ids used as ``source_id`` by the interactions, targets those
  used as ``target_id``; an interaction whose source (target) is described as
  an entity of another type than ``source_type`` (``target_type``) is left out;
  entities without any interaction are not part of the model (a source is
  then served from its metadata, a target is not recommended);
- ``interaction_weights`` weigh each interaction type (unlisted 1.0, 0 drops
  the type); duplicate (source, target) pairs merge into one pair carrying
  the largest weight and the latest timestamp, so weights stay within the
  user's chosen range (a pair seen 500 times would otherwise take 500-fold
  gradient steps);
- with ``use_metadata_features`` each side gets a feature matrix of its
  identity features (weight 1), then its metadata features at ``METADATA_WEIGHT``
  (:mod:`shared.data.features`); a side without metadata features gets none (LightFM's
  implicit identity); ``"auto"`` builds them and training decides whether to use them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from shared.contracts import Counts
from shared.data.feature_matrix import SideFeatures, side_features
from shared.errors import TrainingFailed

#: Timestamp of a pair without one: older than any real timestamp.
NO_TIME = np.iinfo(np.int64).min


@dataclass(frozen=True)
class DatasetOptions:
    """What of the selected data becomes the model's input."""

    source_type: str = "user"
    target_type: str = "item"
    interaction_weights: Mapping[str, float] = field(default_factory=dict)
    use_metadata_features: bool | Literal["auto"] = True


@dataclass(frozen=True)
class Dataset:
    """The model's input; pairs are unique (source, target) with weights and times."""

    source_ids: np.ndarray  # (n_sources,) <U
    target_ids: np.ndarray  # (n_targets,) <U
    rows: np.ndarray  # (n_pairs,) int32 source index
    cols: np.ndarray  # (n_pairs,) int32 target index
    weights: np.ndarray  # (n_pairs,) float32 > 0
    times: np.ndarray  # (n_pairs,) int64 µs since epoch, NO_TIME when unknown
    source_features: SideFeatures | None
    target_features: SideFeatures | None
    counts: Counts
    #: Types named in ``interaction_weights`` that no selected interaction has (a typo?).
    unmatched_weight_types: tuple[str, ...] = ()
    #: The interaction types the selected data has, for the message naming the unmatched.
    interaction_types: tuple[str, ...] = ()

    @property
    def n_sources(self) -> int:
        """Number of sources (rows)."""
        return int(self.source_ids.shape[0])

    @property
    def n_targets(self) -> int:
        """Number of targets (columns)."""
        return int(self.target_ids.shape[0])

    @property
    def has_metadata(self) -> bool:
        """True when either side carries metadata features."""
        return self.source_features is not None or self.target_features is not None

    def without_metadata(self) -> Dataset:
        """The same pairs without feature matrices (LightFM's implicit identity)."""
        return replace(self, source_features=None, target_features=None)

    @property
    def uniform_weights(self) -> bool:
        """True when every pair weighs 1 (LightFM then needs no sample weights)."""
        return bool(np.all(self.weights == 1.0))

    def matrix(self, mask: np.ndarray | None = None) -> sp.coo_matrix:
        """The (n_sources, n_targets) float32 COO of the pairs (optionally a subset)."""
        rows, cols = (self.rows, self.cols) if mask is None else (self.rows[mask], self.cols[mask])
        return sp.coo_matrix(
            (np.ones(rows.shape[0], dtype=np.float32), (rows, cols)),
            shape=(self.n_sources, self.n_targets),
        )

    def weight_matrix(self, mask: np.ndarray | None = None) -> sp.coo_matrix:
        """Sample weights with the same sparsity pattern and order as :meth:`matrix`."""
        rows, cols = (self.rows, self.cols) if mask is None else (self.rows[mask], self.cols[mask])
        data = self.weights if mask is None else self.weights[mask]
        return sp.coo_matrix((data.astype(np.float32), (rows, cols)),
                             shape=(self.n_sources, self.n_targets))

    def data_hash(self) -> str:
        """A SHA-256 over the ids and pairs the model is fit on."""
        digest = hashlib.sha256()
        for array in (self.source_ids, self.target_ids, self.rows, self.cols, self.weights):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


class EmptyData(TrainingFailed):
    """The selection or the options left nothing to train on."""

    code = "empty_data"


# -- interactions -------------------------------------------------------------------------


def _type_weights(types: pa.ChunkedArray, weights: Mapping[str, float]
                  ) -> tuple[np.ndarray, tuple[str, ...]]:
    """Per-row weight of each interaction type (loop per distinct type), and the types."""
    encoded = pc.dictionary_encode(pc.fill_null(types, "default")).combine_chunks()
    values = encoded.dictionary.to_pylist()
    names = [v if v else "default" for v in values]
    table = np.array([float(weights.get(name, 1.0)) for name in names], dtype=np.float32)
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    if not values:
        return np.empty(0, dtype=np.float32), ()
    weights_per_row: np.ndarray = table[indices]
    return weights_per_row, tuple(sorted(set(names)))


def _foreign_ids(entities: pa.Table, own_type: str) -> pa.Array:
    """Ids described as entities of another type than ``own_type``."""
    other = pc.not_equal(pc.fill_null(entities["type"], "default"), own_type)
    return pc.filter(entities["id"], other).combine_chunks()


def _micros(timestamps: pa.ChunkedArray) -> np.ndarray:
    as_int = pc.cast(pc.cast(timestamps, pa.timestamp("us", tz="UTC")), pa.int64())
    micros: np.ndarray = pc.fill_null(as_int, NO_TIME).to_numpy().astype(np.int64)
    return micros


def _index(values: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(unique ids as <U, int32 position of each value in them)."""
    encoded = pc.dictionary_encode(values).combine_chunks()
    ids = np.asarray(encoded.dictionary.to_numpy(zero_copy_only=False), dtype=np.str_)
    return ids, encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)


def _sort_order(keys: np.ndarray) -> np.ndarray:
    """A sorting permutation of non-negative int64 ``keys``: when key and position fit in
    63 bits, sort ``key << bits | position`` (NumPy's SIMD value sort is about twice as
    fast as ``argsort``) and keep the positions."""
    n = keys.size
    bits = max(1, int(n - 1).bit_length())
    top = int(keys.max()) if n else 0
    if top.bit_length() + bits > 63:
        order: np.ndarray = np.argsort(keys)
        return order
    packed = np.sort((keys << bits) | np.arange(n, dtype=np.int64))
    positions: np.ndarray = packed & ((1 << bits) - 1)
    return positions


def _merge_pairs(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, times: np.ndarray,
                 n_targets: int) -> tuple[np.ndarray, ...]:
    """Unique (row, col) pairs with the max weight and the latest time, sorted by pair."""
    keys = rows.astype(np.int64) * n_targets + cols
    order = _sort_order(keys)  # any order among equal keys: max is commutative
    keys = keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    unique = keys[starts]
    merged_w = np.maximum.reduceat(weights[order], starts) if starts.size else weights[:0]
    merged_t = np.maximum.reduceat(times[order], starts) if starts.size else times[:0]
    return ((unique // n_targets).astype(np.int32), (unique % n_targets).astype(np.int32),
            merged_w.astype(np.float32), merged_t.astype(np.int64))


# -- metadata features -------------------------------------------------------------------


# -- the whole dataset -------------------------------------------------------------------


def build_dataset(entities: pa.Table, interactions: pa.Table, options: DatasetOptions) -> Dataset:
    """Assemble the model's input; EmptyData names what left nothing to train on."""
    weights, types = _type_weights(interactions["type"], options.interaction_weights)
    unmatched = tuple(sorted(set(options.interaction_weights) - set(types)))
    keep = weights > 0
    if interactions.num_rows and not keep.any():
        raise EmptyData(
            "interaction_weights give every interaction type weight 0, so no interaction "
            "is left to train on; give at least one type a positive weight.",
            details={"setting": "interaction_weights"},
        )
    for column, own in (("source_id", options.source_type), ("target_id", options.target_type)):
        foreign = pc.is_in(interactions[column], value_set=_foreign_ids(entities, own))
        keep &= ~foreign.to_numpy(zero_copy_only=False)
    if interactions.num_rows and not keep.any():
        raise EmptyData(
            f"No interaction connects a '{options.source_type}' source to a "
            f"'{options.target_type}' target; check source_type and target_type against "
            "the types of your entities.",
            details={"setting": "source_type/target_type"},
        )
    used = interactions.filter(pa.array(keep))
    if used.num_rows == 0:
        raise EmptyData("There are no interactions to train on; upload interactions first.",
                        details={"setting": None})
    source_ids, rows = _index(used["source_id"])
    target_ids, cols = _index(used["target_id"])
    times = _micros(used["timestamp"])
    rows, cols, pair_w, pair_t = _merge_pairs(rows, cols, weights[keep], times, target_ids.size)
    source_features = target_features = None
    if options.use_metadata_features:
        source_features = side_features(entities, options.source_type, source_ids)
        target_features = side_features(entities, options.target_type, target_ids)
    counts: Counts = {
        "entities": int(source_ids.size + target_ids.size),
        "interactions": int(used.num_rows),
        "sources": int(source_ids.size),
        "targets": int(target_ids.size),
    }
    return Dataset(source_ids=source_ids, target_ids=target_ids, rows=rows, cols=cols,
                   weights=pair_w, times=pair_t, source_features=source_features,
                   target_features=target_features, counts=counts,
                   unmatched_weight_types=unmatched, interaction_types=types)


def describe(dataset: Dataset) -> dict[str, Any]:
    """Small facts about a dataset for logs and dry runs."""
    return {**dataset.counts, "pairs": int(dataset.rows.size),
            "source_metadata_features": len(dataset.source_features.names)
            if dataset.source_features else 0,
            "target_metadata_features": len(dataset.target_features.names)
            if dataset.target_features else 0}


def dataset_options(params: Mapping[str, Any]) -> DatasetOptions:
    """What of the selected data becomes model input ("auto" metadata is the default)."""
    metadata = params.get("use_metadata_features", "auto")
    return DatasetOptions(
        source_type=str(params.get("source_type") or "user"),
        target_type=str(params.get("target_type") or "item"),
        interaction_weights={str(k): float(v)
                             for k, v in (params.get("interaction_weights") or {}).items()},
        use_metadata_features="auto" if metadata == "auto" else bool(metadata),
    )
