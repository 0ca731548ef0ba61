"""Entity metadata as model features: the one rule training and cold-start serving share.

docs/api.md, "Metadata features": a string value ``v`` of key ``k`` becomes the
feature ``k=v`` (weight 1); a list of strings one ``k=elem`` feature per string
element; a number (not a bool) the feature ``k`` weighted by value / scale,
where the scale is the largest absolute value of that key over the training
entities of that side (1.0 when 0 or unknown); a bool ``k=true``/``k=false``;
any other value (null, objects, lists of non-strings) is ignored.

The encoding (issue #13): each entity row of a feature matrix keeps its
identity feature at weight 1 and carries its metadata features beside it at
``METADATA_WEIGHT`` times the weight above, with no row normalisation.
Normalising each row to an absolute sum of 1 (the earlier encoding) let a few
metadata features drown what each entity learned on its own: on public rating
data it cost a quarter of precision@10 against no metadata at all. Numbers are
scaled per key into [-1, 1] by the largest absolute value seen in training
(one stored figure per key, so cold start applies exactly the same scaling).
:func:`cold_start_row` applies the same weights to an unseen entity's
metadata-only row. This module is pure (no LightFM) so the API can import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

#: Weight of each metadata feature beside the identity feature (weight 1). Measured on the
#: synthetic datasets of ``bench/quality.py`` (docs/quality.md, "Metadata weight"): 0.05 to
#: 0.2 beat no metadata (by 2% on dense users, 6% on sparse ones), 0.5 only matched it and
#: 1.0 lost to it; 0.1 sits in the middle of the good range. Small enough that an entity
#: with history is mostly itself, large enough that metadata shapes sparse and new
#: entities. Whether metadata is used at all is then chosen on the holdout
#: (``use_metadata_features: "auto"``).
METADATA_WEIGHT = 0.1


def _scale(numeric_scales: Mapping[str, float], key: str) -> float:
    scale = numeric_scales.get(key)
    if scale is None or not math.isfinite(scale) or scale == 0:
        return 1.0
    return abs(float(scale))


def entity_features(
    metadata: Mapping[str, Any], numeric_scales: Mapping[str, float]
) -> dict[str, float]:
    """The metadata features of one entity as {feature name: weight} (docs/api.md rule)."""
    features: dict[str, float] = {}
    for key, value in metadata.items():
        if isinstance(value, bool):
            features[f"{key}={'true' if value else 'false'}"] = 1.0
        elif isinstance(value, str):
            features[f"{key}={value}"] = 1.0
        elif isinstance(value, int | float):
            number = float(value)
            if math.isfinite(number) and number != 0.0:
                features[str(key)] = number / _scale(numeric_scales, str(key))
        elif isinstance(value, list):
            for element in value:
                if isinstance(element, str):
                    features[f"{key}={element}"] = 1.0
    return features


def numeric_scales_of(metadatas: list[Mapping[str, Any]]) -> dict[str, float]:
    """Per numeric key, the largest absolute value over ``metadatas`` (the training side)."""
    scales: dict[str, float] = {}
    for metadata in metadatas:
        for key, value in metadata.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                number = abs(float(value))
                if math.isfinite(number) and number > scales.get(str(key), 0.0):
                    scales[str(key)] = number
    return scales


def cold_start_row(
    metadata: Mapping[str, Any],
    feature_index: Mapping[str, int],
    numeric_scales: Mapping[str, float],
    metadata_weight: float = METADATA_WEIGHT,
) -> tuple[np.ndarray, np.ndarray]:
    """(int32 indices, float32 weights) of an unseen entity's known features, as in training.

    Each weight is the rule's weight times ``metadata_weight``, exactly as the
    training rows carry them (no identity feature, no normalisation).

    Features the model never learned are dropped; an entity with none gets
    two empty arrays (the caller falls back to popularity).
    """
    features = entity_features(metadata, numeric_scales)
    pairs = [(feature_index[name], weight) for name, weight in features.items()
             if name in feature_index and weight != 0.0]
    if not pairs:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float32)
    indices = np.fromiter((p[0] for p in pairs), dtype=np.int32, count=len(pairs))
    weights = np.fromiter((p[1] for p in pairs), dtype=np.float64, count=len(pairs))
    return indices, (weights * metadata_weight).astype(np.float32)
