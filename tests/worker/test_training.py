"""The pure training function on data with planted structure."""

from __future__ import annotations

import numpy as np
import pytest

from shared.data.assembly import DatasetOptions, build_dataset
from shared.errors import TrainingFailed
from tests.helpers.synthetic import clustered
from worker.evaluation import EvaluationSettings
from worker.fitting import Hyperparameters, TrainingCancelled, TrainParams
from worker.training import train


def _params(epochs: int = 10, holdout: float = 0.2, loss: str = "warp") -> TrainParams:
    return TrainParams(
        hyperparameters=Hyperparameters(loss=loss, epochs=epochs, no_components=16),
        evaluation=EvaluationSettings(holdout=holdout, max_sources=10_000, k=10),
        threads=2,
    )


@pytest.mark.parametrize("with_metadata", [False, True])
def test_planted_clusters_beat_the_popularity_baseline(with_metadata: bool) -> None:
    entities, interactions = clustered(with_metadata=with_metadata)
    dataset = build_dataset(entities, interactions, DatasetOptions())
    seen: list[tuple[str, float]] = []
    model = train(dataset, _params(), lambda phase, f: seen.append((phase, f)), lambda: False)
    metrics = model.metrics
    assert metrics is not None
    assert metrics["precision_at_k"] > 2 * metrics["baseline_precision_at_k"]
    assert metrics["precision_at_k"] > 0.15
    assert metrics["auc"] > 0.8
    assert 0 < metrics["recall_at_k"] <= 1
    assert metrics["evaluated_sources"] == 300
    # progress: every epoch of both fits, fractions rising within each phase
    training = [f for p, f in seen if p == "training"]
    evaluating = [f for p, f in seen if p == "evaluating"]
    assert training == sorted(training) and training[-1] == 1.0 and len(training) == 10
    assert evaluating == sorted(evaluating) and evaluating[-1] == 1.0
    assert model.source_repr.shape == (300, 18) and model.target_repr.shape == (200, 18)
    assert model.source_repr.dtype == np.float32
    assert (model.source_feature_embeddings is not None) == with_metadata


def test_representations_reproduce_lightfm_predict() -> None:
    from lightfm import LightFM  # noqa: F401  (the function under test imports it lazily)

    from worker.fitting import fit, representations

    entities, interactions = clustered(n_users=40, n_items=30, per_user=5)
    dataset = build_dataset(entities, interactions, DatasetOptions())
    model = fit(dataset, Hyperparameters(epochs=2, no_components=4), 1, lambda e: None,
                lambda: False)
    source_repr, target_repr = representations(model, dataset)
    users = np.repeat(np.arange(dataset.n_sources, dtype=np.int32), dataset.n_targets)
    items = np.tile(np.arange(dataset.n_targets, dtype=np.int32), dataset.n_sources)
    expected = model.predict(users, items, user_features=dataset.source_features.matrix,  # type: ignore[union-attr]
                             item_features=dataset.target_features.matrix)  # type: ignore[union-attr]
    got = (source_repr @ target_repr.T).ravel()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_holdout_zero_skips_evaluation_and_bpr_trains() -> None:
    entities, interactions = clustered(n_users=60, n_items=40, per_user=5)
    dataset = build_dataset(entities, interactions, DatasetOptions())
    phases: set[str] = set()
    model = train(dataset, _params(epochs=2, holdout=0, loss="bpr"),
                  lambda p, f: phases.add(p), lambda: False)
    assert model.metrics is None and phases == {"training"}


def test_cancel_is_honoured_between_epochs() -> None:
    entities, interactions = clustered(n_users=60, n_items=40, per_user=5)
    dataset = build_dataset(entities, interactions, DatasetOptions())
    epochs: list[float] = []
    with pytest.raises(TrainingCancelled):
        train(dataset, _params(epochs=50), lambda p, f: epochs.append(f),
              lambda: len(epochs) >= 3)
    assert len(epochs) == 3


def test_lightfm_errors_become_training_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightfm import LightFM

    def boom(*args: object, **kwargs: object) -> None:
        raise ValueError("Not all estimated parameters are finite, your model may have diverged.")

    monkeypatch.setattr(LightFM, "fit_partial", boom)
    entities, interactions = clustered(n_users=20, n_items=30, per_user=3)
    dataset = build_dataset(entities, interactions, DatasetOptions())
    with pytest.raises(TrainingFailed, match="learning_rate") as info:
        train(dataset, _params(epochs=2), lambda p, f: None, lambda: False)
    assert info.value.code == "training_diverged"
