"""Entity metadata to a side's sparse feature matrix: identity plus weighted metadata features.

The rules (which feature a metadata value becomes, and its weight) are in
:mod:`shared.data.features`, shared with cold-start serving; this module applies
them to whole columns of entity records with pyarrow, falling back to a Python
pass only for metadata pyarrow cannot read as one table.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import scipy.sparse as sp

from shared.data.features import METADATA_WEIGHT, entity_features, numeric_scales_of


@dataclass(frozen=True)
class SideFeatures:
    """One side's feature matrix: identity columns first, then ``names`` (metadata)."""

    matrix: sp.csr_matrix  # (n_entities, n_entities + len(names)) float32, identity 1
    names: list[str]
    numeric_scales: dict[str, float]
    metadata_weight: float = METADATA_WEIGHT  # what cold start must multiply by


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
