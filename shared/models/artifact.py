"""Trained-model artifacts: numpy arrays and one JSON manifest per version, never a pickle.

Layout of ``storage.model_dir(tenant, model_id, version)``::

    manifest.json                     parameters, counts, metrics, batch ids, data hash
    source_ids.npy, target_ids.npy    numpy unicode ids, row i = index i
    source_repr.npy  (n_sources, k+2) float32 rows [embedding, bias, 1]
    target_repr.npy  (n_targets, k+2) float32 rows [embedding, 1, bias]
    seen_indptr.npy, seen_indices.npy CSR of the fitted (source, target) pairs
    target_popularity.npy             each target's share of interactions (sums to 1)
    source_feature_embeddings.npy     (only with source metadata features)
    source_feature_biases.npy
    target_feature_embeddings.npy     (only with target metadata features: new targets and
    target_feature_biases.npy          similar items of unseen targets are scored from them)

``source_repr @ target_repr.T`` is LightFM's prediction (dot product plus both
biases). Files are written one by one, each atomically; the manifest is written
last, and a version only becomes current (``shared.runs.records``) after
:func:`save_artifact` returns. Loading memory-maps local files so processes
share pages; on S3 the files are downloaded once into a local cache.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import DependencyUnavailable, NotFound
from shared.storage import Storage, model_dir

MANIFEST = "manifest.json"
ARTIFACT_FORMAT = 1
ARRAYS = (
    "source_ids",
    "target_ids",
    "source_repr",
    "target_repr",
    "seen_indptr",
    "seen_indices",
    "target_popularity",
)
OPTIONAL_ARRAYS = ("source_feature_embeddings", "source_feature_biases",
                   "target_feature_embeddings", "target_feature_biases")
#: Arrays written at once by :func:`save_artifact`.
WRITE_THREADS = 4
#: Sub-directory of the data directory where S3 artifacts are cached (pass ``cache_dir``).
CACHE_SUBDIR = "artifact-cache"


@dataclass(frozen=True)
class ModelArtifact:
    """Everything serving needs of one trained version."""

    manifest: dict[str, Any]
    source_ids: np.ndarray
    target_ids: np.ndarray
    source_repr: np.ndarray
    target_repr: np.ndarray
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    target_popularity: np.ndarray
    source_feature_embeddings: np.ndarray | None
    source_feature_biases: np.ndarray | None
    #: Metadata-feature rows of the target side (manifest ``target_features`` names them).
    target_feature_embeddings: np.ndarray | None = None
    target_feature_biases: np.ndarray | None = None


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _check(artifact: ModelArtifact) -> None:
    for name in ("source_ids", "target_ids"):
        dtype = getattr(artifact, name).dtype
        if dtype.kind != "U":
            raise ValueError(f"{name} must be a numpy unicode array, not {dtype}")
    if (artifact.source_feature_embeddings is None) != (artifact.source_feature_biases is None):
        raise ValueError("source feature embeddings and biases go together")
    if (artifact.target_feature_embeddings is None) != (artifact.target_feature_biases is None):
        raise ValueError("target feature embeddings and biases go together")


def save_artifact(
    storage: Storage, tenant: str, model_id: str, version: int, artifact: ModelArtifact
) -> None:
    """Write every array, then the manifest; each file atomically and durably.

    The arrays are written concurrently (their fsyncs, or S3 uploads, overlap);
    the manifest only once all of them are durable.
    """
    _check(artifact)
    base = model_dir(tenant, model_id, version)

    def write(name: str) -> None:
        array = getattr(artifact, name)
        if array is not None:
            storage.put_bytes(f"{base}/{name}.npy", _npy_bytes(array))

    with ThreadPoolExecutor(max_workers=WRITE_THREADS, thread_name_prefix="artifact") as pool:
        for done in [pool.submit(write, name) for name in (*ARRAYS, *OPTIONAL_ARRAYS)]:
            done.result()  # re-raises the first failed write (DependencyUnavailable)
    manifest = {**artifact.manifest, "format": ARTIFACT_FORMAT, "model_id": model_id,
                "version": version}
    storage.put_bytes(f"{base}/{MANIFEST}", json.dumps(manifest, indent=1).encode("utf-8"))


def _cache_root(storage: Storage, cache_dir: Path | None) -> Path:
    root = cache_dir if cache_dir is not None else Path(tempfile.gettempdir()) / CACHE_SUBDIR
    return root / uuid.uuid5(uuid.NAMESPACE_URL, storage.root).hex


def _local_copy(storage: Storage, rel: str, cache: Path) -> Path:
    """Download ``rel`` once into ``cache`` (artifact files never change once written)."""
    dest = cache / rel
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(storage.get_bytes(rel))
        os.replace(tmp, dest)
    return dest


@contextmanager
def _reading(model_id: str, version: int, missing: str) -> Iterator[None]:
    """Storage errors while reading an artifact, as 404 (missing) or 503 (unreachable)."""
    try:
        yield
    except FileNotFoundError as exc:
        raise NotFound(
            f"Version {version} of model '{model_id}' {missing}.",
            code="model_artifact_missing",
            details={"model_id": model_id, "version": version},
        ) from exc
    except OSError as exc:
        raise DependencyUnavailable(
            f"Storage is unreachable while reading model '{model_id}': {exc}",
            details={"dependency": "storage"},
        ) from exc


def load_artifact(
    storage: Storage, tenant: str, model_id: str, version: int, *, cache_dir: Path | None = None
) -> ModelArtifact:
    """Open one version (memory-mapped, read-only); NotFound when it is not on storage.

    On S3 the files are downloaded once into ``cache_dir`` (pass
    ``settings.data_dir / CACHE_SUBDIR``; a temporary directory when omitted).
    """
    base = model_dir(tenant, model_id, version)
    with _reading(model_id, version, "is not on storage"):
        manifest: dict[str, Any] = json.loads(storage.get_bytes(f"{base}/{MANIFEST}"))
    cache = None if storage.is_local else _cache_root(storage, cache_dir)
    arrays: dict[str, np.ndarray | None] = {}
    for name in (*ARRAYS, *OPTIONAL_ARRAYS):
        rel = f"{base}/{name}.npy"
        local = storage.local_path(rel)
        with _reading(model_id, version, f"is incomplete on storage ({name})"):
            if local is None:
                assert cache is not None
                if name in OPTIONAL_ARRAYS and not storage.exists(rel):
                    arrays[name] = None
                    continue
                local = _local_copy(storage, rel, cache)
            elif name in OPTIONAL_ARRAYS and not local.exists():
                arrays[name] = None
                continue
            arrays[name] = np.load(local, mmap_mode="r", allow_pickle=False)
    return ModelArtifact(manifest=manifest, **arrays)  # type: ignore[arg-type]


def delete_version(storage: Storage, tenant: str, model_id: str, version: int) -> None:
    """Remove one version's directory (missing is fine)."""
    storage.delete_tree(model_dir(tenant, model_id, version))
