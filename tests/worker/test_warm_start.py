"""Warm starts: the grown state starts exactly where the parent left off, and keeps learning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from shared.data.assembly import Dataset, DatasetOptions, build_dataset
from shared.models.state import STATE_ARRAYS, has_state, load_state, save_state
from shared.storage import open_storage
from tests.helpers.synthetic import clustered
from worker.evaluation import EvaluationSettings
from worker.training import Hyperparameters, TrainParams, train
from worker.warm_start import feature_names, grow, match_rows, starter, state_of

K = 16


def _params(epochs: int = 10, holdout: float = 0.0) -> TrainParams:
    return TrainParams(hyperparameters=Hyperparameters(epochs=epochs, no_components=K),
                       evaluation=EvaluationSettings(holdout=holdout), threads=1)


def _datasets(with_metadata: bool) -> tuple[Dataset, Dataset]:
    """(parent, child): the child adds 60 users and 10 items the parent never saw."""
    entities, interactions = clustered(with_metadata=with_metadata)
    old_users = pc.is_in(interactions["source_id"],
                         value_set=pa.array([f"u{u}" for u in range(240)]))
    old_items = pc.invert(pc.is_in(interactions["target_id"],
                                   value_set=pa.array([f"i{i}" for i in range(190, 200)])))
    parent = build_dataset(entities, interactions.filter(pc.and_(old_users, old_items)),
                           DatasetOptions())
    child = build_dataset(entities, interactions, DatasetOptions())
    return parent, child


def _fit(dataset: Dataset, epochs: int = 10, start: object = None) -> object:
    trained = train(dataset, _params(epochs), lambda *_: None, lambda: False,
                    start=start)  # type: ignore[arg-type]
    return trained.model


@pytest.mark.parametrize("with_metadata", [False, True])
def test_known_rows_start_exactly_where_the_parent_left_them(with_metadata: bool) -> None:
    # Given a parent fitted on 240 users and 190 items
    parent_data, child_data = _datasets(with_metadata)
    parent_model = _fit(parent_data)
    parent = state_of(parent_model, parent_data, "warp")  # type: ignore[arg-type]

    # When its state grows to data with new users, items (and the same features)
    model = grow(parent, child_data, _params().hyperparameters)

    # Then every row the parent knew holds the parent's values in all twelve arrays
    for side, names, parent_names in (
        ("user", feature_names(child_data.source_ids, child_data.source_features),
         parent.user_feature_names),
        ("item", feature_names(child_data.target_ids, child_data.target_features),
         parent.item_feature_names),
    ):
        new_rows, old_rows = match_rows(parent_names, names)
        assert new_rows.size == parent_names.size  # nothing the parent knew is lost
        for part in ("embeddings", "embedding_gradients", "embedding_momentum", "biases",
                     "bias_gradients", "bias_momentum"):
            grown = getattr(model, f"{side}_{part}")
            assert grown.shape[0] == names.size and grown.dtype == np.float32
            np.testing.assert_array_equal(grown[new_rows],
                                          parent.arrays[f"{side}_{part}"][old_rows])
        # and new rows are initialised as LightFM does (adagrad)
        fresh = np.setdiff1d(np.arange(names.size), new_rows)
        assert fresh.size > 0
        emb = getattr(model, f"{side}_embeddings")[fresh]
        assert np.all(np.abs(emb) <= 0.5 / K) and emb.std() > 0
        assert np.all(getattr(model, f"{side}_embedding_gradients")[fresh] == 1.0)
        assert np.all(getattr(model, f"{side}_bias_gradients")[fresh] == 1.0)
        assert np.all(getattr(model, f"{side}_embedding_momentum")[fresh] == 0.0)
        assert np.all(getattr(model, f"{side}_biases")[fresh] == 0.0)

    # And a known user's vector is exactly the parent's
    u = int(np.flatnonzero(child_data.source_ids == "u7")[0])
    pu = int(np.flatnonzero(parent_data.source_ids == "u7")[0])
    np.testing.assert_array_equal(model.user_embeddings[u],
                                  parent_model.user_embeddings[pu])  # type: ignore[attr-defined]


def test_a_warm_start_gives_new_users_personalised_scores() -> None:
    # Given a parent that never saw users u240..u299 or items i190..i199
    parent_data, child_data = _datasets(with_metadata=False)
    parent = state_of(_fit(parent_data, 15), parent_data, "warp")  # type: ignore[arg-type]

    # When a warm start continues for a few epochs on the data with the new users
    trained = train(child_data, _params(epochs=5), lambda *_: None, lambda: False,
                    start=starter(parent, _params().hyperparameters))

    # Then the new users' top 10 come mostly from their own cluster (popularity would not)
    _entities, interactions = clustered(with_metadata=False)
    liked: dict[str, set[str]] = {}
    for row in interactions.select(["source_id", "target_id"]).to_pylist():
        liked.setdefault(row["source_id"], set()).add(row["target_id"])
    hits = 0
    for user in range(240, 300):
        u = int(np.flatnonzero(child_data.source_ids == f"u{user}")[0])
        scores = trained.target_repr @ trained.source_repr[u]
        top = child_data.target_ids[np.argsort(-scores)[:13]]
        cluster = {int(t[1:]) % 5 for t in liked[f"u{user}"] if int(t[1:]) >= 3}
        hits += sum(1 for t in top if int(t[1:]) >= 3 and int(t[1:]) % 5 in cluster)
    assert hits / (60 * 10) > 0.8


def test_state_round_trips_through_storage_without_pickles(tmp_path: Path) -> None:
    parent_data, _ = _datasets(with_metadata=True)
    state = state_of(_fit(parent_data, 2), parent_data, "warp")  # type: ignore[arg-type]
    storage = open_storage(str(tmp_path))
    assert not has_state(storage, "t", "m", 1)

    save_state(storage, "t", "m", 1, state)

    assert has_state(storage, "t", "m", 1)
    loaded = load_state(storage, "t", "m", 1)
    for name in STATE_ARRAYS:
        np.testing.assert_array_equal(loaded.arrays[name], state.arrays[name])
    np.testing.assert_array_equal(loaded.user_feature_names, state.user_feature_names)
    assert loaded.loss == "warp" and loaded.no_components == K
    assert any(n.startswith("f:") for n in loaded.user_feature_names.tolist())
    for path in (tmp_path).rglob("*.npy"):
        np.load(path, allow_pickle=False)  # raises on any object array


def test_grow_refuses_another_loss_or_size() -> None:
    parent_data, child_data = _datasets(with_metadata=False)
    state = state_of(_fit(parent_data, 1), parent_data, "warp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loss and no_components"):
        grow(state, child_data, Hyperparameters(no_components=K + 1))
