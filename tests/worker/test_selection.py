"""Choices made from the data: early stopping, the metadata comparison, the status fields."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shared.data.assembly import DatasetOptions, build_dataset
from tests.helpers.synthetic import clustered
from worker import selection
from worker.choice import decide
from worker.evaluation import EvaluationSettings
from worker.fitting import Hyperparameters, TrainParams
from worker.params import train_params
from worker.selection import EarlyStopping
from worker.training import train


def _peaked(peak: int, epoch: int) -> float:
    """A curve that rises to ``peak`` and then falls (overfitting), with small wiggles."""
    wiggle = 0.0005 * ((epoch * 7) % 3)
    return 0.3 - 0.002 * (epoch - peak) ** 2 + wiggle


@pytest.mark.parametrize("peak", [1, 4, 12, 40])
def test_early_stopping_stops_at_the_peak_of_a_curve_that_peaks(peak: int) -> None:
    # Given a curve that peaks at `peak`
    stopper = EarlyStopping(max_epochs=100)
    stopped_at = None
    # When it is fed epoch by epoch
    for epoch in range(1, 101):
        if stopper.update(epoch, _peaked(peak, epoch)):
            stopped_at = epoch
            break
    # Then the kept epoch is the peak, and it stopped one patience after it
    assert stopper.best_epoch == peak
    assert stopped_at == peak + stopper.patience


def test_early_stopping_runs_to_the_bound_while_the_curve_rises() -> None:
    stopper = EarlyStopping(max_epochs=30)
    stops = [stopper.update(e, 0.1 + 0.01 * e) for e in range(1, 31)]
    assert stops == [False] * 29 + [True] and stopper.best_epoch == 30


def test_noise_below_the_minimum_improvement_does_not_move_the_best_epoch() -> None:
    stopper = EarlyStopping(max_epochs=100)
    for epoch, score in enumerate([0.1, 0.2, 0.2001, 0.2002, 0.2001, 0.1999], start=1):
        stopper.update(epoch, score)
    assert stopper.best_epoch == 2


def _data(with_metadata: bool = True) -> Any:
    entities, interactions = clustered(with_metadata=with_metadata)
    return build_dataset(entities, interactions, DatasetOptions(use_metadata_features="auto"))


def test_auto_epochs_trains_the_served_model_for_the_peak_of_the_holdout_curve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an evaluation whose holdout curve peaks at epoch 6
    calls: list[int] = []

    def scripted(holdout: Any, source_repr: np.ndarray, target_repr: np.ndarray) -> float:
        calls.append(1)
        return _peaked(6, len(calls))

    monkeypatch.setattr(selection, "holdout_precision", scripted)
    # score after every epoch however the timings of a busy machine compare
    monkeypatch.setattr(selection, "SCORING_BUDGET", 1e9)
    params = TrainParams(hyperparameters=Hyperparameters(no_components=8), epochs_auto=True,
                         max_epochs=50, metadata=False, threads=1)
    seen: list[tuple[str, float]] = []
    # When the run trains with epochs "auto"
    model = train(_data(), params, lambda p, f: seen.append((p, f)), lambda: False)
    # Then it stopped after the patience, and the served fit trained exactly 6 epochs
    assert model.epochs == 6 and model.metadata_features is False
    assert [p["epoch"] for p in model.curve] == list(range(1, 6 + EarlyStopping(50, 6).patience
                                                            + 1))
    assert len([f for p, f in seen if p == "training"]) == 6
    assert model.source_feature_embeddings is None and model.candidates is None


def test_without_a_holdout_auto_means_20_epochs() -> None:
    params = train_params({"evaluation": {"holdout": 0},
                           "hyperparameters": {"no_components": 4}}, threads=1)
    seen: list[str] = []
    model = train(_data(), params, lambda p, f: seen.append(p), lambda: False)
    assert model.epochs == 20 and seen.count("training") == 20 and "evaluating" not in seen
    assert model.metrics is None and model.curve == [] and model.candidates is None
    assert model.metadata_features is True  # nothing to compare on: metadata is kept


def test_metadata_is_kept_on_a_tie_and_dropped_only_when_it_loses() -> None:
    def result(meta: bool, p: float) -> selection.CandidateResult:
        return selection.CandidateResult(meta, 10, p, [{"epoch": 10, "precision_at_k": p}],
                                         {"precision_at_k": p},  # type: ignore[typeddict-item]
                                         0.0, 0.0)

    assert decide([result(True, 0.2), result(False, 0.2)]).metadata_features is True
    lost = decide([result(True, 0.19), result(False, 0.2)])
    assert lost.metadata_features is False
    assert lost.candidates == {"with_metadata": 0.19, "without_metadata": 0.2}


def test_the_status_fields_are_present_and_documented() -> None:
    # Given a run with every default (what a bare POST /train stores)
    from api.training_schemas import MetricsSchema, StatusSchema, resolve_params

    params = train_params(resolve_params({"hyperparameters": {"no_components": 8,
                                                               "max_epochs": 12}}), threads=1)
    assert params.epochs_auto and params.metadata == "auto"
    model = train(_data(), params, lambda p, f: None, lambda: False)
    # Then the training field says what was chosen and why
    choice = model.training_choice()
    assert set(choice) == {"epochs", "metadata_features", "curve", "candidates"}
    assert 1 <= choice["epochs"] <= 12 and isinstance(choice["metadata_features"], bool)
    assert choice["curve"] and all(set(p) == {"epoch", "precision_at_k"}
                                   for p in choice["curve"])
    assert set(choice["candidates"]) == {"with_metadata", "without_metadata"}
    best = max(choice["candidates"].values())
    assert choice["candidates"]["with_metadata" if choice["metadata_features"]
                                else "without_metadata"] == best
    assert (model.source_feature_embeddings is not None) == choice["metadata_features"]
    # and the metrics carry each new figure beside the baseline's
    metrics = model.metrics
    assert metrics is not None
    for name in ("ndcg_at_k", "map_at_k", "coverage"):
        assert 0 <= metrics[name] <= 1 and 0 <= metrics[f"baseline_{name}"] <= 1  # type: ignore[literal-required]
    assert metrics["ndcg_at_k"] > metrics["baseline_ndcg_at_k"]
    assert metrics["coverage"] > metrics["baseline_coverage"]
    # and the status schema (which documents the API) carries and describes them all
    status = StatusSchema().dump({"model_id": "m", "training": choice, "metrics": metrics})
    assert status["training"] == choice and status["metrics"] == metrics
    training = StatusSchema().fields["training"]
    assert training.metadata["description"]
    for name in ("epochs", "metadata_features", "curve", "candidates"):
        assert training.schema.fields[name].metadata["description"]
    assert {"ndcg_at_k", "map_at_k", "coverage", "baseline_ndcg_at_k", "baseline_map_at_k",
            "baseline_coverage"} <= set(MetricsSchema().fields)


def test_fixed_settings_report_the_curve_without_candidates() -> None:
    params = TrainParams(hyperparameters=Hyperparameters(no_components=8, epochs=4),
                         evaluation=EvaluationSettings(holdout=0.2), threads=1)
    model = train(_data(), params, lambda p, f: None, lambda: False)
    assert model.epochs == 4 and model.metadata_features is True and model.candidates is None
    assert model.curve[-1]["epoch"] == 4
    assert model.metrics is not None
    assert model.metrics["precision_at_k"] == model.curve[-1]["precision_at_k"]


@pytest.mark.parametrize("variant, keeps_metadata", [("signal", True), ("noise", False)])
def test_auto_metadata_picks_the_right_side_on_both_synthetic_variants(
    variant: str, keeps_metadata: bool
) -> None:
    # Given sparse users and a long tail, with metadata that explains taste or is noise
    from bench.quality import generate

    entities, interactions = generate(8_000, 4_000, 40_000, variant, seed=3)
    dataset = build_dataset(entities, interactions, DatasetOptions(use_metadata_features="auto"))
    params = TrainParams(hyperparameters=Hyperparameters(epochs=15), metadata="auto",
                         evaluation=EvaluationSettings(holdout=0.2), threads=1)
    # When "auto" compares the two on the holdout
    model = train(dataset, params, lambda p, f: None, lambda: False)
    # Then it keeps metadata where it carries signal and drops it where it is noise
    assert model.candidates is not None
    assert model.metadata_features is keeps_metadata, model.candidates
    assert (model.source_feature_embeddings is not None) is keeps_metadata


def _scripted_fit(monkeypatch: pytest.MonkeyPatch, curve: Any,
                  rival: list[Any] | None) -> selection.CandidateResult:
    """An evaluation fit (metadata off, 30 epochs at most) whose curve follows ``curve(epoch)``."""
    epochs: list[int] = []

    def scripted(holdout: Any, source_repr: np.ndarray, target_repr: np.ndarray) -> float:
        epochs.append(1)
        return float(curve(len(epochs)))

    monkeypatch.setattr(selection, "holdout_precision", scripted)
    monkeypatch.setattr(selection, "SCORING_BUDGET", 1e9)  # score after every epoch
    params = TrainParams(hyperparameters=Hyperparameters(no_components=4), epochs_auto=True,
                         max_epochs=30, metadata=False, threads=1)
    dataset = _data().without_metadata()
    from worker.evaluation import holdout_split

    return selection.evaluation_fit(dataset, params, holdout_split(dataset, 0.2), 30, True,
                                    lambda e: None, lambda: False, rival=rival)


def test_the_second_candidate_is_dropped_once_it_trails_the_first_clearly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the first candidate's curve, rising to 0.30 by epoch 10
    rival = [{"epoch": e, "precision_at_k": 0.2 + 0.01 * min(e, 10)} for e in range(1, 14)]
    # When the second rises as fast but 20% lower
    result = _scripted_fit(monkeypatch, lambda e: 0.8 * (0.2 + 0.01 * min(e, 10)), rival)
    # Then it stops after DROP_AFTER scored epochs, marked as dropped
    assert result.dropped and len(result.curve) == selection.DROP_AFTER


@pytest.mark.parametrize("lag", [0.0, 0.03])
def test_a_second_candidate_within_the_margin_or_ahead_is_not_dropped(
        monkeypatch: pytest.MonkeyPatch, lag: float) -> None:
    # Given the first candidate's curve, and a second one level with it or 3% behind
    # (inside DROP_MARGIN), or ahead early and behind later on (curves that cross)
    rival = [{"epoch": e, "precision_at_k": 0.2 + 0.01 * min(e, 10)} for e in range(1, 14)]
    result = _scripted_fit(monkeypatch, lambda e: (1 - lag) * (0.2 + 0.01 * min(e, 10)), rival)
    assert not result.dropped and result.epochs == 10
    crossing = _scripted_fit(monkeypatch, lambda e: 0.28 + 0.001 * min(e, 5), rival)
    assert not crossing.dropped


def test_every_metric_is_computed_for_the_winner_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a run that compares the two candidates
    computed: list[int] = []
    full = selection.evaluate_holdout

    def counting(*args: Any) -> Any:
        computed.append(1)
        return full(*args)

    monkeypatch.setattr(selection, "evaluate_holdout", counting)
    params = TrainParams(hyperparameters=Hyperparameters(no_components=4, epochs=3),
                         metadata="auto", evaluation=EvaluationSettings(holdout=0.2), threads=1)
    model = train(_data(), params, lambda p, f: None, lambda: False)
    # Then one full evaluation ran, and the winner's precision is its metrics' figure
    assert computed == [1] and model.candidates is not None and model.metrics is not None
    assert model.metrics["precision_at_k"] == max(model.candidates.values())


def test_a_cheap_curve_is_scored_after_every_epoch_however_short_the_epochs() -> None:
    # Given small data, where an epoch takes about a millisecond and a scoring pass a few
    # (more than the 10% budget of an epoch, but cheap)
    dataset = _data().without_metadata()
    params = TrainParams(hyperparameters=Hyperparameters(no_components=8), epochs_auto=True,
                         max_epochs=12, metadata=False, threads=1)
    from worker.evaluation import holdout_split

    # When the evaluation fit runs with early stopping
    result = selection.evaluation_fit(dataset, params, holdout_split(dataset, 0.2), 12, True,
                                      lambda e: None, lambda: False)
    # Then every epoch it trained was scored: its stop is decided on the whole curve
    epochs = [p["epoch"] for p in result.curve]
    assert epochs == list(range(1, len(epochs) + 1)), epochs
