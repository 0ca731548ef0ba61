"""Hand-built model artifacts registered as serving versions, for tests of serving code.

``make_artifact`` builds a small model with known representations, ``register``
stores it and makes it the serving version through the real run lifecycle, and
``brute`` is the reference top-k those tests compare against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shared.models.artifact import ModelArtifact, save_artifact
from shared.runs.ending import complete_run
from shared.runs.lifecycle import create_run, start_attempt
from shared.runs.ref import RunRef
from shared.storage import Storage


def make_artifact(
    n_sources: int = 6,
    n_targets: int = 40,
    k: int = 4,
    seed: int = 0,
    seen: Mapping[int, Sequence[int]] | None = None,
    features: Sequence[str] | None = None,
    numeric_scales: Mapping[str, float] | None = None,
    source_type: str = "user",
    target_type: str = "item",
) -> ModelArtifact:
    """A small random model in the artifact format (ids u0.., i0..)."""
    rng = np.random.default_rng(seed)
    src = np.hstack([rng.standard_normal((n_sources, k)), rng.standard_normal((n_sources, 1)),
                     np.ones((n_sources, 1))]).astype(np.float32)
    tgt = np.hstack([rng.standard_normal((n_targets, k)), np.ones((n_targets, 1)),
                     rng.standard_normal((n_targets, 1))]).astype(np.float32)
    seen = seen or {}
    indptr = np.zeros(n_sources + 1, dtype=np.int64)
    indices: list[int] = []
    for row in range(n_sources):
        indices.extend(sorted(seen.get(row, ())))
        indptr[row + 1] = len(indices)
    popularity = rng.random(n_targets).astype(np.float32)
    popularity /= popularity.sum()
    source_features = None
    emb = bias = None
    if features:
        source_features = {"names": list(features), "numeric_scales": dict(numeric_scales or {})}
        emb = rng.standard_normal((len(features), k)).astype(np.float32)
        bias = rng.standard_normal(len(features)).astype(np.float32)
    manifest: dict[str, Any] = {
        "created_at": "2026-01-01T00:00:00Z", "source_type": source_type,
        "target_type": target_type, "hyperparameters": {}, "use_metadata_features": bool(features),
        "no_components": k, "n_sources": n_sources, "n_targets": n_targets, "counts": {},
        "data_batch_ids": [], "data_hash": "x", "metrics": None,
        "source_features": source_features,
    }
    return ModelArtifact(
        manifest=manifest,
        source_ids=np.array([f"u{i}" for i in range(n_sources)]),
        target_ids=np.array([f"i{i}" for i in range(n_targets)]),
        source_repr=src, target_repr=tgt,
        seen_indptr=indptr, seen_indices=np.asarray(indices, dtype=np.int32),
        target_popularity=popularity,
        source_feature_embeddings=emb, source_feature_biases=bias,
    )


def register(
    r: Any, storage: Storage, tenant: str, model_id: str, artifact: ModelArtifact
) -> int:
    """Run the registry's lifecycle for one version: queued, started, saved, completed."""
    status = create_run(r, tenant, model_id, {}, None)
    version = status["version"]
    assert start_attempt(r, RunRef(tenant, model_id, version), "owner", 60) is not None
    save_artifact(storage, tenant, model_id, version, artifact)
    done, _ = complete_run(
        r, None, RunRef(tenant, model_id, version), owner="owner", keep_versions=3, message="done",
        model_fields={"source_type": artifact.manifest["source_type"],
                      "target_type": artifact.manifest["target_type"]},
    )
    assert done is not None and done["status"] == "completed"
    return version


def brute(artifact: ModelArtifact, row: int, k: int, exclude_seen: bool) -> list[str]:
    """Reference ranking: full score vector, full sort."""
    scores = artifact.source_repr[row].astype(np.float64) @ artifact.target_repr.T
    if exclude_seen:
        lo, hi = artifact.seen_indptr[row], artifact.seen_indptr[row + 1]
        scores[artifact.seen_indices[lo:hi]] = -np.inf
    order = [int(c) for c in np.argsort(-scores, kind="stable") if np.isfinite(scores[c])]
    return [str(artifact.target_ids[c]) for c in order[:k]]


def brute_shaped(art: ModelArtifact, row: int, allowed: np.ndarray, k: int) -> list[str]:
    scores = art.source_repr[row].astype(np.float64) @ art.target_repr.T.astype(np.float64)
    scores[~allowed] = -np.inf
    lo, hi = art.seen_indptr[row], art.seen_indptr[row + 1]
    scores[art.seen_indices[lo:hi]] = -np.inf
    order = [c for c in np.argsort(-scores, kind="stable") if np.isfinite(scores[c])]
    return [str(art.target_ids[c]) for c in order[:k]]


def taste_model() -> ModelArtifact:
    """Users 0-4 like jazz, 5-9 like rock; item embeddings follow their genre."""
    base = make_artifact(n_sources=10, n_targets=20, k=2, seed=1)
    jazz, rock = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    src = np.array([[*(jazz if u < 5 else rock), 0.0, 1.0] for u in range(10)], np.float32)
    tgt = np.array([[*((jazz if i < 10 else rock) * 0.5), 1.0, 0.0] for i in range(20)],
                   np.float32)
    # metadata_weight 1: these hand-made feature rows are scaled like the item rows above
    manifest = {**base.manifest, "target_features": {"names": ["genre=jazz", "genre=rock"],
                                                     "numeric_scales": {},
                                                     "metadata_weight": 1.0}}
    return ModelArtifact(**{**base.__dict__, "manifest": manifest, "source_repr": src,
                            "target_repr": tgt,
                            "target_feature_embeddings": np.array([jazz, rock], np.float32),
                            "target_feature_biases": np.zeros(2, np.float32)})
