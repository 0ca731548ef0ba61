"""Dataset assembly: ids, merged pairs, weights, types and metadata features."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import shared.data.assembly as ds
import shared.data.feature_matrix as fm
from shared.data.assembly import DatasetOptions, EmptyData, build_dataset
from shared.data.feature_matrix import SideFeatures
from shared.data.features import METADATA_WEIGHT, entity_features


def _entities(rows: list[tuple[str, str, dict[str, Any]]]) -> pa.Table:
    text = pa.string()
    return pa.table({
        "id": pa.array([r[0] for r in rows], text), "type": pa.array([r[1] for r in rows], text),
        "name": pa.array([""] * len(rows), text),
        "metadata": pa.array([json.dumps(r[2]) for r in rows], text),
        "media_url": pa.array([None] * len(rows), text),
    })


def _interactions(rows: list[tuple[str, str, str, int | None]]) -> pa.Table:
    ts = [None if r[3] is None else datetime.fromtimestamp(r[3], UTC) for r in rows]
    text = pa.string()
    return pa.table({
        "type": pa.array([r[0] for r in rows], text),
        "source_id": pa.array([r[1] for r in rows], text),
        "target_id": pa.array([r[2] for r in rows], text),
        "timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "metadata": pa.array(["{}"] * len(rows), text),
    })


NO_ENTITIES = _entities([])


def test_duplicate_pairs_merge_with_the_largest_weight_and_latest_time() -> None:
    data = _interactions([("view", "u1", "i1", 10), ("buy", "u1", "i1", 5),
                          ("view", "u1", "i2", None), ("view", "u2", "i1", 7)])
    dataset = build_dataset(NO_ENTITIES, data,
                            DatasetOptions(interaction_weights={"buy": 3.0}))
    pairs = {(str(dataset.source_ids[r]), str(dataset.target_ids[c])): (float(w), int(t))
             for r, c, w, t in zip(dataset.rows, dataset.cols, dataset.weights, dataset.times,
                                   strict=True)}
    assert pairs == {("u1", "i1"): (3.0, 10_000_000), ("u1", "i2"): (1.0, ds.NO_TIME),
                     ("u2", "i1"): (1.0, 7_000_000)}
    assert dataset.counts == {"entities": 4, "interactions": 4, "sources": 2, "targets": 2}
    assert dataset.source_ids.dtype.kind == "U"
    assert not dataset.uniform_weights


def test_weight_zero_drops_a_type_and_all_zero_names_the_setting() -> None:
    data = _interactions([("view", "u1", "i1", 1), ("skip", "u1", "i2", 2)])
    dataset = build_dataset(NO_ENTITIES, data, DatasetOptions(interaction_weights={"skip": 0}))
    assert dataset.counts["interactions"] == 1 and dataset.target_ids.tolist() == ["i1"]
    with pytest.raises(EmptyData, match="interaction_weights"):
        build_dataset(NO_ENTITIES, data,
                      DatasetOptions(interaction_weights={"skip": 0, "view": 0}))


def test_interactions_with_entities_of_other_types_are_left_out() -> None:
    entities = _entities([("u1", "user", {}), ("shop", "store", {}), ("i1", "item", {})])
    data = _interactions([("view", "u1", "i1", 1), ("view", "u1", "shop", 2),
                          ("view", "u9", "i1", 3)])
    dataset = build_dataset(entities, data, DatasetOptions())
    assert sorted(dataset.source_ids.tolist()) == ["u1", "u9"]  # u9 is implied
    assert dataset.target_ids.tolist() == ["i1"]
    with pytest.raises(EmptyData, match="source_type"):
        build_dataset(entities, data.slice(0, 2), DatasetOptions(source_type="store"))


def test_no_interactions_at_all_is_an_empty_data_error() -> None:
    with pytest.raises(EmptyData, match="no interactions"):
        build_dataset(NO_ENTITIES, _interactions([]), DatasetOptions())


def test_metadata_features_follow_the_rule_identity_at_full_weight() -> None:
    entities = _entities([
        ("u1", "user", {"age": 30, "country": "fr", "tags": ["a", "b"], "vip": True}),
        ("u2", "user", {"age": -60, "since": "2020-01-01"}),
        ("i1", "item", {}),
    ])
    data = _interactions([("view", "u1", "i1", 1), ("view", "u2", "i1", 2)])
    dataset = build_dataset(entities, data, DatasetOptions())
    assert dataset.target_features is None  # no item metadata: implicit identity
    side = dataset.source_features
    assert side is not None and side.numeric_scales == {"age": 60.0}
    dense = side.matrix.toarray()
    np.testing.assert_allclose(np.diag(dense[:, :dataset.n_sources]), 1.0)  # no normalising
    u1 = dataset.source_ids.tolist().index("u1")
    row = {name: dense[u1, dataset.n_sources + j] for j, name in enumerate(side.names)
           if dense[u1, dataset.n_sources + j] != 0}
    w = METADATA_WEIGHT
    assert row == pytest.approx({"age": 0.5 * w, "country=fr": w, "tags=a": w, "tags=b": w,
                                 "vip=true": w})
    assert dense[u1, u1] == 1.0
    assert "since=2020-01-01" in side.names  # a date-like string stays a string
    off = build_dataset(entities, data, DatasetOptions(use_metadata_features=False))
    assert off.source_features is None


def test_mixed_type_metadata_takes_the_per_entity_path_with_the_same_result() -> None:
    metas = [{"size": 3, "colour": "red"}, {"size": "large"}, {"colour": ["blue", 1]}]
    entities = _entities([(f"u{i}", "user", m) for i, m in enumerate(metas)])
    data = _interactions([("view", f"u{i}", "i1", i) for i in range(3)])
    dataset = build_dataset(entities, data, DatasetOptions())
    side = dataset.source_features
    assert side is not None
    dense = side.matrix.toarray()
    for i, metadata in enumerate(metas):
        row = dataset.source_ids.tolist().index(f"u{i}")
        expected = entity_features(metadata, side.numeric_scales)
        got = {name: dense[row, dataset.n_sources + j] for j, name in enumerate(side.names)
               if dense[row, dataset.n_sources + j] != 0}
        assert got == pytest.approx({k: v * METADATA_WEIGHT for k, v in expected.items()})


def _feature_rows(side: SideFeatures, n: int) -> list[dict[str, float]]:
    dense = side.matrix.toarray()
    return [{name: float(dense[row, n + j]) for j, name in enumerate(side.names)
             if dense[row, n + j] != 0} for row in range(n)]


def test_vectorised_and_per_entity_metadata_paths_agree() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    keys = st.sampled_from(["genre", "size", "tags", "new", "price"])
    values = st.one_of(
        st.text("abc=", min_size=1, max_size=3), st.integers(-50, 50),
        st.floats(-10, 10, allow_nan=False), st.booleans(), st.none(),
        st.lists(st.text("xy", min_size=1, max_size=1), max_size=3),  # duplicates too
    )

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.dictionaries(keys, values, max_size=4), min_size=1, max_size=6))
    def check(metas: list[dict[str, Any]]) -> None:
        entities = _entities([(f"u{i}", "user", m) for i, m in enumerate(metas)])
        ids = np.array([f"u{i}" for i in range(len(metas))])
        fast = fm.side_features(entities, "user", ids)
        rows, texts = fm._metadata_rows(entities, "user", ids)
        slow_parts = fm._python_features(texts, rows)
        expected_scales = slow_parts[3]
        if fast is None:
            assert all(not entity_features(m, expected_scales) for m in metas)
            return
        assert fast.numeric_scales == pytest.approx(expected_scales)
        for row, metadata in enumerate(metas):
            wanted = entity_features(metadata, expected_scales)
            got = _feature_rows(fast, len(metas))[row]
            # float32 matrices drop weights too small to represent (e.g. 1e-130 / 1)
            expected = {k: v * METADATA_WEIGHT for k, v in wanted.items()
                        if np.float32(v * METADATA_WEIGHT) != 0}
            assert got == pytest.approx(expected, abs=1e-6), metas

    check()


@pytest.mark.parametrize("top", [0, 5, 10**9, 2**62])
def test_pair_sort_order_sorts_small_and_huge_keys(top: int) -> None:
    # given keys with many repeats, small ones (packed sort) and huge ones (argsort fallback)
    rng = np.random.default_rng(top % 97)
    keys = rng.integers(0, top + 1, 5000, dtype=np.int64)
    # when the merge step orders them
    order = ds._sort_order(keys)
    # then the order is a permutation that sorts them
    assert np.array_equal(np.sort(order), np.arange(keys.size))
    assert np.all(np.diff(keys[order]) >= 0)
    assert ds._sort_order(np.empty(0, np.int64)).size == 0
