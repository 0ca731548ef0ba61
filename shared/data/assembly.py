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
import io
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import scipy.sparse as sp

from shared.contracts import Counts
from shared.data.features import METADATA_WEIGHT, entity_features, numeric_scales_of
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
class SideFeatures:
    """One side's feature matrix: identity columns first, then ``names`` (metadata)."""

    matrix: sp.csr_matrix  # (n_entities, n_entities + len(names)) float32, identity 1
    names: list[str]
    numeric_scales: dict[str, float]
    metadata_weight: float = METADATA_WEIGHT  # what cold start must multiply by


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


def _metadata_rows(
    entities: pa.Table, own_type: str, ids: np.ndarray
) -> tuple[np.ndarray, pa.Array]:
    """(row index into ``ids``, metadata JSON text) of this side's entities with metadata."""
    own = pc.equal(pc.fill_null(entities["type"], "default"), own_type)
    meta = pc.fill_null(entities["metadata"], "{}")
    keep = pc.and_(own, pc.not_equal(pc.utf8_trim_whitespace(meta), "{}"))
    chosen = entities.filter(keep)
    positions = pc.index_in(chosen["id"], value_set=pa.array(ids, pa.string()))
    found = pc.is_valid(positions)
    rows = pc.filter(positions, found).to_numpy(zero_copy_only=False).astype(np.int32)
    texts = pc.filter(pc.fill_null(chosen["metadata"], "{}"), found).combine_chunks()
    return rows, texts


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _read_metadata_table(texts: pa.Array) -> pa.Table | None:
    """All metadata of one side as one typed table, or None when types clash."""
    flat = pc.replace_substring_regex(texts, r"[\r\n]", " ")
    buffer = ("\n".join(flat.to_pylist()) + "\n").encode("utf-8") if len(flat) else b""
    try:
        table = pajson.read_json(io.BytesIO(buffer))
        wrong = [f.name for f in table.schema if pa.types.is_temporal(f.type)]
        if wrong:  # ISO-looking strings were parsed as dates: read them again as strings
            schema = pa.schema([pa.field(name, pa.string()) for name in wrong])
            options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
            table = pajson.read_json(io.BytesIO(buffer), parse_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != len(texts):
        return None
    return table


def _vectorised_features(
    table: pa.Table, rows: np.ndarray
) -> tuple[list[pa.Array], list[np.ndarray], list[np.ndarray], dict[str, float]]:
    """(feature names, entity rows, weights) per column, and the numeric scales."""
    names: list[pa.Array] = []
    out_rows: list[np.ndarray] = []
    out_weights: list[np.ndarray] = []
    scales: dict[str, float] = {}
    for column_name in table.column_names:  # per metadata key
        column = table[column_name].combine_chunks()
        kind = column.type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            if not _is_text(kind.value_type):
                continue
            pairs = pa.table({"parent": pc.list_parent_indices(column),
                              "value": pc.list_flatten(column)})
            # one feature per distinct element: ["a", "a"] is the feature "key=a" once
            pairs = pairs.filter(pc.is_valid(pairs["value"])).group_by(
                ["parent", "value"], use_threads=False).aggregate([])
            parents = pairs["parent"].to_numpy()
            names.append(pc.binary_join_element_wise(f"{column_name}=", pairs["value"], ""))
            out_rows.append(rows[parents])
            out_weights.append(np.ones(parents.size, dtype=np.float32))
        elif pa.types.is_boolean(kind) or _is_text(kind):
            valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
            text = pc.cast(column.filter(pa.array(valid)), pa.string())
            if pa.types.is_boolean(kind):
                text = pc.if_else(column.filter(pa.array(valid)), "true", "false")
            names.append(pc.binary_join_element_wise(f"{column_name}=", text, ""))
            out_rows.append(rows[valid])
            out_weights.append(np.ones(int(valid.sum()), dtype=np.float32))
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
            values_np = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
            valid = np.isfinite(values_np) & (values_np != 0)
            if not valid.any():
                continue
            scale = float(np.abs(values_np[valid]).max())
            scales[column_name] = scale
            names.append(pa.array(np.full(int(valid.sum()), column_name), pa.string()))
            out_rows.append(rows[valid])
            out_weights.append((values_np[valid] / scale).astype(np.float32))
    return names, out_rows, out_weights, scales


def _python_features(
    texts: pa.Array, rows: np.ndarray
) -> tuple[list[pa.Array], list[np.ndarray], list[np.ndarray], dict[str, float]]:
    """The same as :func:`_vectorised_features`, per entity (mixed-type metadata only)."""
    metadatas: list[Mapping[str, Any]] = []
    for text in texts.to_pylist():
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = {}
        metadatas.append(value if isinstance(value, dict) else {})
    scales = numeric_scales_of(metadatas)
    feature_names: list[str] = []
    feature_rows: list[int] = []
    feature_weights: list[float] = []
    for row, metadata in zip(rows.tolist(), metadatas, strict=True):
        for name, weight in entity_features(metadata, scales).items():
            feature_names.append(name)
            feature_rows.append(row)
            feature_weights.append(weight)
    return ([pa.array(feature_names, pa.string())], [np.array(feature_rows, dtype=np.int64)],
            [np.array(feature_weights, dtype=np.float32)], scales)


def side_features(entities: pa.Table, own_type: str, ids: np.ndarray) -> SideFeatures | None:
    """The feature matrix of one side, or None when its entities carry no metadata feature."""
    rows, texts = _metadata_rows(entities, own_type, ids)
    if rows.size == 0:
        return None
    table = _read_metadata_table(texts)
    parts = _python_features(texts, rows) if table is None else _vectorised_features(table, rows)
    names_parts, row_parts, weight_parts, scales = parts
    names_all = pa.chunked_array(names_parts, pa.string()) if names_parts else None
    if names_all is None or len(names_all) == 0:
        return None
    encoded = pc.dictionary_encode(names_all).combine_chunks()
    feature_names = [str(n) for n in encoded.dictionary.to_pylist()]
    feature_cols = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    meta_rows = np.concatenate(row_parts).astype(np.int64)
    meta_w = np.concatenate(weight_parts).astype(np.float32)
    n = ids.shape[0]
    all_rows = np.concatenate([np.arange(n, dtype=np.int64), meta_rows])
    all_cols = np.concatenate([np.arange(n, dtype=np.int64), n + feature_cols])
    all_w = np.concatenate([np.ones(n, dtype=np.float32), meta_w * METADATA_WEIGHT])
    matrix = sp.coo_matrix((all_w, (all_rows, all_cols)),
                           shape=(n, n + len(feature_names))).tocsr()
    matrix.sum_duplicates()
    return SideFeatures(matrix=matrix.astype(np.float32).tocsr(), names=feature_names,
                        numeric_scales=scales)


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
