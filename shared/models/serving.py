"""Serving trained models: the per-process artifact cache and what is derived from a version.

:class:`ModelCache` maps ``(tenant, model_id, version)`` to a loaded, memory-
mapped artifact. Every request first reads the model's serving version (one
Redis HGET), so a retrain that becomes current is served by the very next
request, with no restart; older versions of the same model drop out of the
cache when a newer one loads. :class:`LoadedModel` adds the lookups built
once per version: source id to row, popularity order, metadata feature index.
Scoring blocks of sources is :mod:`shared.models.blocks`.

The cache is a small OrderedDict LRU rather than ``functools.lru_cache``: a
new version must push the model's older versions out at once, and loads are
serialised so two threads never load the same version twice.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis

from shared.data.features import METADATA_WEIGHT, cold_start_row
from shared.errors import Conflict, DependencyUnavailable, NotFound
from shared.models import scoring
from shared.models.artifact import CACHE_SUBDIR, ModelArtifact, load_artifact
from shared.runs import records as runs
from shared.storage import Storage

#: Loaded versions kept per process (memory-mapped, so an entry costs little resident memory).
MAX_CACHED_MODELS = 32

#: Looks up the metadata of a source the model never saw (None: nothing known).
MetadataLookup = Callable[[str], Mapping[str, Any] | None]

@dataclass
class LoadedModel:
    """One served version with the lookup structures derived from it once, at load."""

    tenant: str
    model_id: str
    version: int
    artifact: ModelArtifact
    sorted_rows: np.ndarray = field(init=False)
    pop_order: np.ndarray = field(init=False)
    feature_index: dict[str, int] | None = field(init=False)
    numeric_scales: dict[str, float] = field(init=False)
    metadata_weight: float = field(init=False)

    def __post_init__(self) -> None:
        # Only the permutation is kept: lookups search the memory-mapped ids through it.
        self.sorted_rows = np.argsort(self.artifact.source_ids, kind="stable")
        self.pop_order = scoring.popularity_order(self.artifact.target_popularity)
        spec = self.artifact.manifest.get("source_features")
        if spec and self.artifact.source_feature_embeddings is not None:
            self.feature_index = {str(name): i for i, name in enumerate(spec.get("names", []))}
            self.numeric_scales = {
                str(k): float(v) for k, v in (spec.get("numeric_scales") or {}).items()
            }
        else:
            self.feature_index = None
            self.numeric_scales = {}
        # the weight training gave metadata features (shared.data.features); absent: the default
        self.metadata_weight = float((spec or {}).get("metadata_weight", METADATA_WEIGHT))

    @property
    def source_type(self) -> str:
        """The entity type the model recommends for."""
        return str(self.artifact.manifest.get("source_type") or "user")

    @property
    def target_type(self) -> str:
        """The entity type the model recommends."""
        return str(self.artifact.manifest.get("target_type") or "item")

    @property
    def n_sources(self) -> int:
        """Sources with a learned representation."""
        return int(self.artifact.source_ids.shape[0])

    @property
    def n_targets(self) -> int:
        """Targets the model can recommend (filtered-out ones were never included)."""
        return int(self.artifact.target_ids.shape[0])

    @property
    def has_metadata_features(self) -> bool:
        """True when unseen sources can be scored from their metadata."""
        return bool(self.feature_index)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each source id in the artifact, -1 for ids the model never saw (vectorised)."""
        if self.n_sources == 0 or len(ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        source_ids = self.artifact.source_ids
        pos = np.searchsorted(source_ids, ids, sorter=self.sorted_rows)
        rows = self.sorted_rows[np.minimum(pos, self.n_sources - 1)]
        found = source_ids[rows] == ids
        return np.where(found, rows, -1).astype(np.int64)

    def cold_repr(self, metadata: Mapping[str, Any]) -> np.ndarray | None:
        """A representation for an unseen source from its metadata, None when none is usable."""
        art = self.artifact
        if not self.feature_index or art.source_feature_embeddings is None:
            return None
        if art.source_feature_biases is None:
            return None
        idx, weights = cold_start_row(metadata, self.feature_index, self.numeric_scales,
                                      self.metadata_weight)
        if len(idx) == 0:
            return None
        return scoring.cold_start_repr(
            idx, weights, art.source_feature_embeddings, art.source_feature_biases
        )


class ModelCache:
    """Per-process cache of loaded versions, keyed by (tenant, model_id, version)."""

    def __init__(self, max_models: int = MAX_CACHED_MODELS) -> None:
        self.max_models = max_models
        self._models: OrderedDict[tuple[str, str, int], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._models)

    def get(
        self,
        r: redis.Redis,
        storage: Storage,
        tenant: str,
        model_id: str,
        data_dir: Path | None = None,
    ) -> LoadedModel:
        """The serving version of a model; 404 unknown, 409 while its first training runs."""
        version = runs.serving_version(r, tenant, model_id)
        for _attempt in range(3):
            if version is None:
                raise _not_serving(r, tenant, model_id)
            try:
                return self._get_version(storage, tenant, model_id, version, data_dir)
            except NotFound as exc:
                # The version may have been replaced (and its files pruned) since the HGET.
                latest = runs.serving_version(r, tenant, model_id)
                if latest == version:
                    raise DependencyUnavailable(
                        f"The files of version {version} of model '{model_id}' are missing "
                        "on storage.",
                        code="model_artifact_missing",
                        details={"model_id": model_id, "version": version,
                                 "dependency": "storage"},
                    ) from exc
                version = latest
        raise DependencyUnavailable(
            f"Model '{model_id}' changed versions while loading; try again.",
            details={"model_id": model_id, "dependency": "storage"},
        )

    def _get_version(
        self, storage: Storage, tenant: str, model_id: str, version: int, data_dir: Path | None
    ) -> LoadedModel:
        key = (tenant, model_id, version)
        with self._lock:
            hit = self._models.get(key)
            if hit is not None:
                self._models.move_to_end(key)
                return hit
        with self._load_lock:
            with self._lock:
                hit = self._models.get(key)
            if hit is not None:
                return hit
            cache_dir = None if data_dir is None else data_dir / CACHE_SUBDIR
            artifact = load_artifact(storage, tenant, model_id, version, cache_dir=cache_dir)
            loaded = LoadedModel(tenant, model_id, version, artifact)
        with self._lock:
            for other in [k for k in self._models if k[:2] == key[:2] and k[2] < version]:
                del self._models[other]
            self._models[key] = loaded
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
        return loaded


def limit_blas_threads(threads: int) -> None:
    """Cap this process's BLAS threads (the API scores many requests at once; see Settings)."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(limits=threads, user_api="blas")


def _unknown(model_id: str) -> NotFound:
    return NotFound(
        f"There is no model '{model_id}'. Train one with POST /train first.",
        code="model_not_found",
        details={"model_id": model_id},
    )


def _not_serving(r: redis.Redis, tenant: str, model_id: str) -> Exception:
    """404 for an unknown model, 409 (with its status) for one still training the first time."""
    if runs.get_model(r, tenant, model_id) is None:
        return _unknown(model_id)
    details: dict[str, Any] = {"model_id": model_id}
    with contextlib.suppress(NotFound):
        details = dict(runs.get_status(r, tenant, model_id))
    if details.get("status") == "error":
        message = (f"Model '{model_id}' has no trained version: its training ended in an "
                   "error (see details). Fix the cause and train it again.")
    else:
        message = (f"Model '{model_id}' has no trained version yet; its first training has "
                   "not completed. Watch GET /status/<model_id> and ask again when it does.")
    return Conflict(message, code="model_not_ready", details=details)
