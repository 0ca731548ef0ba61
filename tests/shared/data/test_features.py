"""The metadata-feature rule shared by training and cold-start serving."""

from __future__ import annotations

import numpy as np

from shared.data.features import (
    METADATA_WEIGHT,
    cold_start_row,
    entity_features,
    numeric_scales_of,
)


def test_each_value_kind_becomes_the_documented_feature() -> None:
    metadata = {
        "genre": "jazz",
        "tags": ["live", "vinyl", 3],
        "price": 5,
        "rating": -2.0,
        "explicit": True,
        "free": False,
        "nested": {"a": 1},
        "nothing": None,
    }
    features = entity_features(metadata, {"price": 10.0, "rating": 4.0})
    assert features == {
        "genre=jazz": 1.0,
        "tags=live": 1.0,
        "tags=vinyl": 1.0,
        "price": 0.5,
        "rating": -0.5,
        "explicit=true": 1.0,
        "free=false": 1.0,
    }


def test_unknown_or_zero_scale_means_one() -> None:
    assert entity_features({"n": 3}, {}) == {"n": 3.0}
    assert entity_features({"n": 3}, {"n": 0.0}) == {"n": 3.0}


def test_scales_are_the_largest_absolute_value_per_key() -> None:
    scales = numeric_scales_of([{"a": 2, "b": True}, {"a": -7.5}, {"c": "x"}])
    assert scales == {"a": 7.5}


def test_cold_start_row_keeps_known_features_at_the_training_weight() -> None:
    index = {"genre=jazz": 3, "price": 0}
    idx, w = cold_start_row({"genre": "jazz", "price": 5, "unknown": "z"}, index, {"price": 10.0})
    assert idx.dtype == np.int32 and w.dtype == np.float32
    assert dict(zip(idx.tolist(), w.tolist(), strict=True)) == {
        3: np.float32(METADATA_WEIGHT), 0: np.float32(0.5 * METADATA_WEIGHT)
    }
    _, w2 = cold_start_row({"genre": "jazz"}, index, {}, metadata_weight=0.2)
    assert w2.tolist() == [np.float32(0.2)]


def test_cold_start_row_without_known_features_is_empty() -> None:
    idx, w = cold_start_row({"genre": "rock"}, {"genre=jazz": 0}, {})
    assert idx.size == 0 and w.size == 0
