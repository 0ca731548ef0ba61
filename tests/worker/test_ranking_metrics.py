"""NDCG@k, MAP@k and coverage (model and most-popular baseline) against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.contracts import Counts
from shared.data.assembly import NO_TIME, Dataset
from worker.evaluation import EvaluationSettings, evaluate, holdout_precision, prepare_holdout


def _dataset(n_sources: int, n_targets: int, pairs: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    # skewed targets so the popularity baseline has a clear order
    keys = np.unique(rng.integers(0, n_sources, pairs).astype(np.int64) * n_targets
                     + np.minimum(rng.zipf(1.5, pairs) - 1, n_targets - 1))
    rows, cols = (keys // n_targets).astype(np.int32), (keys % n_targets).astype(np.int32)
    counts: Counts = {"entities": 0, "interactions": int(keys.size), "sources": n_sources,
                      "targets": n_targets}
    return Dataset(
        source_ids=np.array([f"u{i}" for i in range(n_sources)]),
        target_ids=np.array([f"i{i}" for i in range(n_targets)]),
        rows=rows, cols=cols, weights=np.ones(keys.size, dtype=np.float32),
        times=np.where(rng.random(keys.size) < 0.1, NO_TIME,
                       rng.integers(0, 10**12, keys.size)),
        source_features=None, target_features=None, counts=counts)


def _brute(scores: np.ndarray, train: set[tuple[int, int]], test: dict[int, set[int]],
           k: int) -> dict[str, float]:
    """Rank every evaluated row by sorting, one row at a time: the textbook definitions."""
    precision, ndcg, ap, covered = [], [], [], set()
    for row, relevant in sorted(test.items()):
        ranked = [c for c in np.argsort(-scores[row], kind="stable").tolist()
                  if (row, c) not in train][:k]
        covered.update(ranked)
        hits = [c in relevant for c in ranked]
        precision.append(sum(hits) / k)
        dcg = sum(1 / math.log2(i + 2) for i, h in enumerate(hits) if h)
        ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(relevant))))
        ndcg.append(dcg / ideal)
        found, total = 0, 0.0
        for i, h in enumerate(hits):
            if h:
                found += 1
                total += found / (i + 1)
        ap.append(total / min(k, len(relevant)))
    n_targets = scores.shape[1]
    return {"precision_at_k": float(np.mean(precision)), "ndcg_at_k": float(np.mean(ndcg)),
            "map_at_k": float(np.mean(ap)), "coverage": len(covered) / n_targets}


@pytest.mark.parametrize("seed, n_targets", [(0, 40), (1, 40), (2, 40), (3, 12), (4, 9)])
def test_new_metrics_equal_a_brute_force_computation(seed: int, n_targets: int) -> None:
    # Given a random dataset (with 9-12 targets, many sources have seen most of them, so
    # fewer than k remain to rank), a random model and a holdout of each source's newest pairs
    from worker.evaluation import holdout_split

    dataset = _dataset(n_sources=60, n_targets=n_targets, pairs=900, seed=seed)
    rng = np.random.default_rng(seed + 10)
    k_dim = 5
    source_repr = rng.standard_normal((60, k_dim)).astype(np.float32)
    target_repr = rng.standard_normal((n_targets, k_dim)).astype(np.float32)
    test_mask = holdout_split(dataset, 0.3)
    settings = EvaluationSettings(holdout=0.3, max_sources=10_000, k=7)
    # When the one-pass evaluation scores it
    metrics = evaluate(dataset, test_mask, source_repr, target_repr, settings, seed)
    # Then every figure equals the brute-force ranking's, for the model...
    train = set(zip(dataset.rows[~test_mask].tolist(), dataset.cols[~test_mask].tolist(),
                    strict=True))
    test: dict[int, set[int]] = {}
    for r, c in zip(dataset.rows[test_mask].tolist(), dataset.cols[test_mask].tolist(),
                    strict=True):
        test.setdefault(r, set()).add(c)
    scores = source_repr.astype(np.float64) @ target_repr.T.astype(np.float64)
    model = _brute(scores, train, test, 7)
    figures: dict[str, float] = dict(metrics)  # type: ignore[arg-type]
    for name, value in model.items():
        assert figures[name] == pytest.approx(value, abs=2e-6), name
    # ... and for the most-popular baseline (popularity on the training pairs, ties by index)
    popularity = np.bincount(dataset.cols[~test_mask], minlength=n_targets).astype(np.float64)
    order = np.argsort(-popularity, kind="stable")
    pop_scores = np.empty(n_targets)
    pop_scores[order] = -np.arange(n_targets, dtype=np.float64)
    base = _brute(np.tile(pop_scores, (60, 1)), train, test, 7)
    for name, value in base.items():
        assert figures[f"baseline_{name}"] == pytest.approx(value, abs=2e-6), name
    assert metrics["evaluated_sources"] == len(test)
    # and the curve's cheap figure is the same precision
    holdout = prepare_holdout(dataset, test_mask, settings, seed)
    assert holdout_precision(holdout, source_repr, target_repr) == pytest.approx(
        metrics["precision_at_k"], abs=2e-6)


def test_a_holdout_with_no_source_to_score_gives_zeros() -> None:
    dataset = _dataset(n_sources=5, n_targets=5, pairs=5, seed=3)
    no_test = np.zeros(dataset.rows.size, dtype=bool)
    metrics = evaluate(dataset, no_test, np.ones((5, 2), np.float32), np.ones((5, 2), np.float32),
                       EvaluationSettings(), 0)
    assert metrics["evaluated_sources"] == 0 and metrics["ndcg_at_k"] == 0.0
    assert metrics["baseline_coverage"] == 0.0
