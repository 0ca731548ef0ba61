"""The one-pass metrics agree with a brute-force computation; the split keeps recent pairs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from shared.data.assembly import DatasetOptions, build_dataset
from worker.evaluation import EvaluationSettings, evaluate, holdout_split


def _random_dataset(seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    n = 3000
    sources = rng.integers(0, 80, n)
    targets = (rng.zipf(1.6, n) % 150)
    ts = pa.array(rng.integers(0, 10**9, n) * 1_000_000, pa.int64()).cast(
        pa.timestamp("us", tz="UTC"))
    interactions = pa.table({
        "type": pa.array(["view"] * n), "source_id": pa.array([f"u{s}" for s in sources]),
        "target_id": pa.array([f"i{t}" for t in targets]), "timestamp": ts,
        "metadata": pa.array(["{}"] * n)})
    entities = pa.table({name: pa.array([], pa.string())
                         for name in ("id", "type", "name", "metadata", "media_url")})
    return build_dataset(entities, interactions, DatasetOptions())


def test_holdout_takes_each_source_s_most_recent_share() -> None:
    dataset = _random_dataset()
    mask = holdout_split(dataset, 0.25)
    for row in range(dataset.n_sources):
        mine = dataset.rows == row
        count = int(mine.sum())
        held = mask & mine
        if count < 2:
            assert not held.any()
            continue
        assert int(held.sum()) == min(max(1, int(0.25 * count)), count - 1)
        assert dataset.times[held].min() >= dataset.times[mine & ~mask].max()


def test_metrics_match_a_brute_force_ranking() -> None:
    dataset = _random_dataset(1)
    mask = holdout_split(dataset, 0.2)
    rng = np.random.default_rng(3)
    source_repr = rng.normal(size=(dataset.n_sources, 6)).astype(np.float32)
    target_repr = rng.normal(size=(dataset.n_targets, 6)).astype(np.float32)
    k = 5
    got = evaluate(dataset, mask, source_repr, target_repr, EvaluationSettings(0.2, 10_000, k), 0)
    popularity = np.bincount(dataset.cols[~mask], minlength=dataset.n_targets)
    precision, recall, aucs, baseline = [], [], [], []
    for row in range(dataset.n_sources):  # brute force, per source
        test = set(dataset.cols[mask & (dataset.rows == row)].tolist())
        if not test:
            continue
        train = set(dataset.cols[~mask & (dataset.rows == row)].tolist())
        candidates = [t for t in range(dataset.n_targets) if t not in train]
        scores = source_repr[row] @ target_repr.T
        top = sorted(candidates, key=lambda t: -scores[t])[:k]
        hits = len(test & set(top))
        precision.append(hits / k)
        recall.append(hits / len(test))
        negatives = [t for t in candidates if t not in test]
        aucs.append(np.mean([np.mean([scores[p] > scores[n] for n in negatives])
                             for p in test]))
        pop_top = sorted(candidates, key=lambda t: (-popularity[t], t))[:k]
        baseline.append(len(test & set(pop_top)) / k)
    assert got["evaluated_sources"] == len(precision)
    assert abs(got["precision_at_k"] - np.mean(precision)) < 1e-6
    assert abs(got["recall_at_k"] - np.mean(recall)) < 1e-6
    assert abs(got["auc"] - np.mean(aucs)) < 1e-6
    assert abs(got["baseline_precision_at_k"] - np.mean(baseline)) < 1e-6


def test_max_sources_caps_the_scored_sources() -> None:
    dataset = _random_dataset(2)
    mask = holdout_split(dataset, 0.2)
    reprs = np.ones((dataset.n_sources, 3), np.float32), np.ones((dataset.n_targets, 3), np.float32)
    got = evaluate(dataset, mask, *reprs, EvaluationSettings(0.2, 17, 10), 0)
    assert got["evaluated_sources"] == 17


def test_small_chunks_give_the_same_metrics(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # given scores split into many chunks of 2 sources (and many row-gather blocks)
    import worker.evaluation as evaluation

    dataset = _random_dataset(4)
    mask = holdout_split(dataset, 0.3)
    rng = np.random.default_rng(5)
    source_repr = rng.normal(size=(dataset.n_sources, 4)).astype(np.float32)
    target_repr = rng.normal(size=(dataset.n_targets, 4)).astype(np.float32)
    settings = EvaluationSettings(0.3, 10_000, 7)
    whole = evaluate(dataset, mask, source_repr, target_repr, settings, 0)
    # when the same metrics are computed with a tiny memory budget
    monkeypatch.setattr(evaluation, "CHUNK_CELLS", 2 * dataset.n_targets)
    chunked = evaluate(dataset, mask, source_repr, target_repr, settings, 0)
    # then nothing changes
    assert chunked == whole
    assert whole["evaluated_sources"] > 20
