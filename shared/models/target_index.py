"""A columnar index of a model's targets' newest entity records, for request-time shaping.

Request-time ``filters`` (API.md, "Recommendations") are the ``data_filters``
language over target fields ``id``, ``type``, ``name`` and ``metadata.<key>``,
checked against each target's newest entity record. :class:`TargetIndex` holds
those records as one pyarrow table, one row per target column of the model
(rows ``0..n_known-1`` are the artifact's targets in artifact order; the rows
after them are *new targets*: entities of the model's target type with no
interactions in the model). A filter becomes a boolean numpy mask over those
rows, evaluated by :func:`shared.data.filters.filter_mask` (the one filter
language): ``metadata.<key>`` conditions run on the *distinct* values of that
key (each key's values are extracted and dictionary-coded once per index), so
a condition over 100,000 targets costs a comparison per distinct value and one
``take``. Masks, and the target rows they keep, are cached per index.

The index belongs to one model version and one list of entity batches:
:class:`TargetIndexCache` checks the tenant's entity batch ids (one Redis read)
on every use and rebuilds the index when they changed, so a newly uploaded
record (an item now out of stock) is seen by the next request.

New targets are scored from the model's target metadata-feature embeddings
(artifact ``target_feature_*``, manifest ``target_features``), with the same
feature rule as cold-start sources (:func:`shared.data.features.cold_start_row`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from shared.data.batches import batch_ids_newest_first
from shared.data.features import METADATA_WEIGHT, cold_start_row
from shared.data.filters import (
    METADATA_PREFIX,
    Condition,
    as_array,
    filter_mask,
    parse_conditions,
)
from shared.data.selection import _newest_per_id
from shared.errors import DependencyUnavailable, ValidationFailed
from shared.models.serving import LoadedModel
from shared.storage import Storage, batch_path

#: Fields a request-time filter may name (besides ``metadata.<key>``).
TARGET_FIELDS = ("id", "type", "name")
#: Masks (with their gathered target rows) kept per index.
MAX_CACHED_MASKS = 64
#: Indexes kept per process.
MAX_CACHED_INDEXES = 32


def parse_target_filters(raw: Any, name: str = "filters") -> tuple[Condition, ...]:
    """Validate request-time filters (422 ``invalid_filters`` naming the bad condition)."""
    errors: dict[str, Any] = {}
    conditions = parse_conditions(raw, name, errors)
    for i, cond in enumerate(conditions):
        if cond.field not in TARGET_FIELDS and not cond.field.startswith(METADATA_PREFIX):
            errors[f"{name}[{i}]"] = (
                f"field must be one of {', '.join(TARGET_FIELDS)} or metadata.<key>")
    if errors:
        fields = {key.removeprefix("data_filters."): value for key, value in errors.items()}
        raise ValidationFailed(
            "The filters are invalid: " + "; ".join(f"{k}: {v}" for k, v in
                                                    list(fields.items())[:3]),
            code="invalid_filters",
            details={"fields": fields},
        )
    return conditions


def _target_features(model: LoadedModel) -> tuple[dict[str, int], dict[str, float]] | None:
    art = model.artifact
    spec = art.manifest.get("target_features")
    if not spec or art.target_feature_embeddings is None or art.target_feature_biases is None:
        return None
    index = {str(n): i for i, n in enumerate(spec.get("names", []))}
    scales = {str(k): float(v) for k, v in (spec.get("numeric_scales") or {}).items()}
    return (index, scales) if index else None


def has_target_features(model: LoadedModel) -> bool:
    """True when the model learned target metadata features (new targets can be scored)."""
    return _target_features(model) is not None


def target_repr_from_metadata(model: LoadedModel, metadata: Mapping[str, Any]
                              ) -> np.ndarray | None:
    """A target representation ``[w @ emb, 1, w @ bias]`` from metadata; None when unusable."""
    spec = _target_features(model)
    art = model.artifact
    if spec is None or art.target_feature_embeddings is None or art.target_feature_biases is None:
        return None
    weight = float(art.manifest["target_features"].get("metadata_weight", METADATA_WEIGHT))
    idx, weights = cold_start_row(metadata, spec[0], spec[1], weight)
    if len(idx) == 0:
        return None
    emb = np.asarray(art.target_feature_embeddings, dtype=np.float32)[idx]
    bias = np.asarray(art.target_feature_biases, dtype=np.float32)[idx]
    out = np.empty(emb.shape[1] + 2, dtype=np.float32)
    out[:-2] = weights @ emb
    out[-2] = 1.0
    out[-1] = float(weights @ bias)
    return out


def normalised(reprs: np.ndarray) -> np.ndarray:
    """Unit rows of the embedding part of target representations (zero rows stay zero)."""
    emb = np.asarray(reprs[:, :-2], dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    out: np.ndarray = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
    return out


class TargetIndex:
    """The newest entity record of every target column of one model version (thread-safe)."""

    def __init__(self, model: LoadedModel, entities: pa.Table,
                 batch_ids: tuple[str, ...]) -> None:
        self.model = model
        self.batch_ids = batch_ids
        art = model.artifact
        self.n_known = model.n_targets
        known = pa.array(np.asarray(art.target_ids).tolist(), pa.string())
        ids = entities.column("id")
        at = pc.index_in(known, value_set=ids)
        records = entities.take(at)
        types = pc.fill_null(entities.column("type"), "default")
        new = entities.filter(pc.and_(pc.equal(types, model.target_type),
                                      pc.invert(pc.is_in(ids, value_set=known))))
        columns: dict[str, pa.Array] = {}
        for name in ("id", "type", "name", "metadata", "media_url"):
            head = known if name == "id" else records.column(name)
            if name == "type":  # an id no entity batch describes has the model's target type
                head = pc.fill_null(head, model.target_type)
            columns[name] = pa.concat_arrays(
                [as_array(head).cast(pa.string()), as_array(new.column(name)).cast(pa.string())])
        self.table = pa.table(columns)
        self.ids = np.asarray(self.table.column("id").to_pylist(), dtype=str)
        self.n_rows = int(self.table.num_rows)
        self._order = np.argsort(self.ids, kind="stable")
        self._lock = threading.Lock()
        self._masks: OrderedDict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = (
            OrderedDict())
        self._keys: dict[str, tuple[np.ndarray, pa.Table]] = {}
        self._parsed: tuple[np.ndarray, list[Any]] | None = None
        self._space: tuple[np.ndarray, np.ndarray] | None = None
        self._normed: dict[bool, np.ndarray] = {}
        self._entities: tuple[list[Any], list[Any]] | None = None

    @property
    def n_new(self) -> int:
        """Rows of new targets (entity records of the target type the model never saw)."""
        return self.n_rows - self.n_known

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """Index row of each id, -1 for ids the index does not hold (vectorised)."""
        wanted = np.asarray(list(ids), dtype=str)
        if self.n_rows == 0 or len(wanted) == 0:
            return np.full(len(wanted), -1, dtype=np.int64)
        pos = np.searchsorted(self.ids, wanted, sorter=self._order)
        rows = self._order[np.minimum(pos, self.n_rows - 1)]
        return np.where(self.ids[rows] == wanted, rows, -1).astype(np.int64)

    # -- filters -----------------------------------------------------------------------------
    def _metadata(self) -> tuple[np.ndarray, list[Any]]:
        """(row -> distinct metadata code, parsed distinct metadata), parsed once."""
        with self._lock:
            if self._parsed is None:
                col = self.table.column("metadata")
                uniques = pc.unique(col)
                codes = pc.index_in(col, value_set=uniques, skip_nulls=False)
                parsed = [orjson.loads(t) if t else None for t in uniques.to_pylist()]
                self._parsed = (np.asarray(codes, dtype=np.int64), parsed)
            return self._parsed

    def _key_column(self, key: str) -> tuple[np.ndarray, pa.Table]:
        """Row -> code of the row's value of ``key``, and a table of the distinct values."""
        with self._lock:
            hit = self._keys.get(key)
        if hit is not None:
            return hit
        codes, parsed = self._metadata()
        texts: dict[bytes, int] = {}
        per_unique = np.empty(len(parsed), dtype=np.int64)
        for i, meta in enumerate(parsed):
            value = meta.get(key) if isinstance(meta, dict) else None
            text = b"" if value is None else orjson.dumps({key: value})
            per_unique[i] = texts.setdefault(text, len(texts))
        values = [t.decode() if t else None for t in texts]
        column = (per_unique[codes], pa.table({"metadata": pa.array(values, pa.string())}))
        with self._lock:
            self._keys[key] = column
        return column

    def _condition(self, cond: Condition) -> np.ndarray:
        if cond.field.startswith(METADATA_PREFIX):
            codes, distinct = self._key_column(cond.field[len(METADATA_PREFIX):])
            on_distinct = np.asarray(filter_mask(distinct, [cond]), dtype=bool)
            picked: np.ndarray = on_distinct[codes]
            return picked
        mask: np.ndarray = np.asarray(filter_mask(self.table.select([cond.field]), [cond]),
                                      dtype=bool)
        return mask

    def passing(self, conditions: Sequence[Condition]) -> np.ndarray:
        """True for every index row (known and new targets) meeting every condition."""
        mask = np.ones(self.n_rows, dtype=bool)
        for cond in conditions:
            mask &= self._condition(cond)
        return mask

    def mask(self, conditions: Sequence[Condition], new_targets: bool
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mask over the scoring space, its passing columns, their target representations).

        The space is the known targets, plus the scorable new targets with ``new_targets``.
        Cached per (conditions, new_targets).
        """
        key = orjson.dumps([[c.field, c.op, c.value] for c in conditions] + [new_targets])
        with self._lock:
            hit = self._masks.get(key)
            if hit is not None:
                self._masks.move_to_end(key)
                return hit
        reprs, scorable = self.space(new_targets)
        mask = scorable & self.passing(conditions)[: len(scorable)]
        cols = np.flatnonzero(mask)
        entry = (mask, cols, np.ascontiguousarray(reprs[cols]))
        with self._lock:
            self._masks[key] = entry
            while len(self._masks) > MAX_CACHED_MASKS:
                self._masks.popitem(last=False)
        return entry

    # -- scoring space -----------------------------------------------------------------------
    def space(self, new_targets: bool) -> tuple[np.ndarray, np.ndarray]:
        """(target representations, scorable mask) of the known targets (+ new targets)."""
        art = self.model.artifact
        if not new_targets:
            return art.target_repr, np.ones(self.n_known, dtype=bool)
        with self._lock:
            if self._space is not None:
                return self._space
        k2 = art.target_repr.shape[1]
        extra = np.zeros((self.n_new, k2), dtype=np.float32)
        ok = np.zeros(self.n_new, dtype=bool)
        texts = self.table.column("metadata").slice(self.n_known).to_pylist()
        # One feature row per new target, once per index: each is its own metadata.
        for i, text in enumerate(texts):
            rep = target_repr_from_metadata(self.model, orjson.loads(text)) if text else None
            if rep is not None:
                extra[i], ok[i] = rep, True
        space = (np.vstack([np.asarray(art.target_repr), extra]),
                 np.concatenate([np.ones(self.n_known, dtype=bool), ok]))
        with self._lock:
            self._space = space
        return space

    def normed(self, new_targets: bool) -> np.ndarray:
        """Unit embedding rows of the scoring space (cosine similarity is one product)."""
        with self._lock:
            hit = self._normed.get(new_targets)
        if hit is not None:
            return hit
        result = normalised(self.space(new_targets)[0])
        with self._lock:
            self._normed[new_targets] = result
        return result

    def entities(self, rows: np.ndarray) -> tuple[list[Any], list[Any]]:
        """(name, media_url) of index rows, from their newest entity records (None: absent)."""
        with self._lock:
            if self._entities is None:
                self._entities = (self.table.column("name").to_pylist(),
                                  self.table.column("media_url").to_pylist())
            names, urls = self._entities
        picked = rows.tolist()
        return [names[r] for r in picked], [urls[r] for r in picked]


def read_entities(storage: Storage, tenant: str, batch_ids: Sequence[str]) -> pa.Table:
    """The newest record of every entity id in ``batch_ids`` (given newest first)."""
    tables = []
    for batch_id in reversed(batch_ids):
        try:
            tables.append(pq.read_table(storage.full_path(batch_path(tenant, batch_id)),
                                        filesystem=storage.fs))
        except FileNotFoundError:  # deleted since it was listed
            continue
        except (OSError, pa.ArrowException) as exc:
            raise DependencyUnavailable(
                f"Storage could not read batch {batch_id}: {exc}",
                details={"dependency": "storage", "batch_id": batch_id},
            ) from exc
    return _newest_per_id(tables)


class TargetIndexCache:
    """Per-process :class:`TargetIndex` per model version, rebuilt when entity batches change."""

    def __init__(self, max_indexes: int = MAX_CACHED_INDEXES) -> None:
        self.max_indexes = max_indexes
        self._indexes: OrderedDict[tuple[str, str, int], TargetIndex] = OrderedDict()
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()

    def get(self, storage: Storage, r: redis.Redis, model: LoadedModel) -> TargetIndex:
        """The index of ``model`` for the tenant's current entity batches."""
        batch_ids = tuple(batch_ids_newest_first(r, model.tenant, "entities"))
        key = (model.tenant, model.model_id, model.version)
        with self._lock:
            hit = self._indexes.get(key)
            if hit is not None and hit.batch_ids == batch_ids and hit.model is model:
                self._indexes.move_to_end(key)
                return hit
        with self._build_lock:
            with self._lock:
                hit = self._indexes.get(key)
            if hit is not None and hit.batch_ids == batch_ids and hit.model is model:
                return hit
            index = TargetIndex(model, read_entities(storage, model.tenant, batch_ids),
                                batch_ids)
        with self._lock:
            for other in [k for k in self._indexes if k[:2] == key[:2] and k[2] < key[2]]:
                del self._indexes[other]
            self._indexes[key] = index
            while len(self._indexes) > self.max_indexes:
                self._indexes.popitem(last=False)
        return index
