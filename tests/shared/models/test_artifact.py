"""Artifacts round-trip through storage as plain numpy files, memory-mapped on load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.errors import NotFound
from shared.models.artifact import ModelArtifact, load_artifact, save_artifact
from shared.storage import Storage, model_dir


def _artifact(with_features: bool) -> ModelArtifact:
    rng = np.random.default_rng(0)
    return ModelArtifact(
        manifest={"source_type": "user", "target_type": "item", "no_components": 2},
        source_ids=np.array(["u1", "u2"]),
        target_ids=np.array(["i1", "i2", "i3"]),
        source_repr=rng.random((2, 4), dtype=np.float32),
        target_repr=rng.random((3, 4), dtype=np.float32),
        seen_indptr=np.array([0, 1, 3], dtype=np.int64),
        seen_indices=np.array([0, 1, 2], dtype=np.int32),
        target_popularity=np.array([0.2, 0.3, 0.5], dtype=np.float32),
        source_feature_embeddings=rng.random((2, 2), dtype=np.float32) if with_features else None,
        source_feature_biases=np.zeros(2, dtype=np.float32) if with_features else None,
    )


@pytest.mark.parametrize("with_features", [True, False])
def test_saved_artifact_loads_back_identically(tmp_path: Path, with_features: bool) -> None:
    storage = Storage(str(tmp_path))
    original = _artifact(with_features)
    save_artifact(storage, "acme", "m1", 3, original)
    loaded = load_artifact(storage, "acme", "m1", 3)
    assert loaded.manifest["version"] == 3 and loaded.manifest["model_id"] == "m1"
    assert loaded.manifest["format"] == 1
    assert loaded.source_ids.dtype.kind == "U"
    assert isinstance(loaded.source_repr, np.memmap)
    np.testing.assert_array_equal(loaded.target_repr, original.target_repr)
    np.testing.assert_array_equal(loaded.seen_indices, original.seen_indices)
    assert (loaded.source_feature_embeddings is None) == (not with_features)
    names = storage.list_dir(model_dir("acme", "m1", 3))
    assert "manifest.json" in names and not any(n.endswith(".tmp") for n in names)


def test_missing_version_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_artifact(Storage(str(tmp_path)), "acme", "m1", 1)


def test_object_id_arrays_are_refused(tmp_path: Path) -> None:
    bad = _artifact(False)
    object_ids = ModelArtifact(**{**bad.__dict__, "source_ids": np.array(["a", "b"], dtype=object)})
    with pytest.raises(ValueError, match="unicode"):
        save_artifact(Storage(str(tmp_path)), "acme", "m1", 1, object_ids)
