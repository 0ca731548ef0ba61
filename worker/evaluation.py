"""Holdout metrics from one numpy scoring pass (never ``lightfm.evaluation``).

``lightfm.evaluation`` scores every target for every source once per metric
(DESIGN.md, "Known pitfalls"). Here the scores of at most ``max_sources``
sampled sources are computed once, chunk by chunk, as one matrix product,
and precision@k, recall@k, AUC and the most-popular baseline's precision@k
all come from that pass. Training pairs are excluded from the ranking, as
LightFM's own metrics do with ``train_interactions``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from shared.contracts import Metrics
from worker.dataset import Dataset

#: Scores held in memory at once (float32 cells) while evaluating: about 64 MiB.
CHUNK_CELLS = 1 << 24


@dataclass(frozen=True)
class EvaluationSettings:
    """API.md ``evaluation``: holdout fraction (0 turns it off), sources scored, k."""

    holdout: float = 0.1
    max_sources: int = 10_000
    k: int = 10


def holdout_split(dataset: Dataset, holdout: float) -> np.ndarray:
    """Mask of the pairs held out: each source's most recent ``holdout`` share.

    Sources with fewer than 2 pairs are not split; others hold out at least 1
    and keep at least 1 for training. Pairs without a timestamp count as the
    oldest; ties keep upload order.
    """
    n_pairs = dataset.rows.size
    if holdout <= 0 or n_pairs == 0:
        return np.zeros(n_pairs, dtype=bool)
    order = np.lexsort((np.arange(n_pairs), dataset.times, dataset.rows))
    rows_sorted = dataset.rows[order]
    counts = np.bincount(dataset.rows, minlength=dataset.n_sources)
    starts = np.cumsum(counts) - counts
    n_hold = np.where(counts >= 2,
                      np.clip(np.floor(holdout * counts), 1, np.maximum(counts - 1, 1)), 0)
    rank = np.arange(n_pairs) - starts[rows_sorted]
    test_sorted = rank >= counts[rows_sorted] - n_hold[rows_sorted]
    mask = np.zeros(n_pairs, dtype=bool)
    mask[order] = test_sorted
    return mask


def _csr(dataset: Dataset, mask: np.ndarray) -> sp.csr_matrix:
    return sp.csr_matrix(
        (np.ones(int(mask.sum()), dtype=np.bool_), (dataset.rows[mask], dataset.cols[mask])),
        shape=(dataset.n_sources, dataset.n_targets),
    )


def _top_k_hits(scores: np.ndarray, test: np.ndarray, k: int) -> np.ndarray:
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    hits: np.ndarray = np.take_along_axis(test, top, axis=1).sum(axis=1)
    return hits


def _auc(scores: np.ndarray, test: np.ndarray, n_train: np.ndarray) -> np.ndarray:
    """Per-row AUC of the test targets against every target neither train nor test."""
    n_targets = scores.shape[1]
    pos_rows, pos_cols = np.nonzero(test)
    pos_scores = scores[pos_rows, pos_cols]
    n_test = test.sum(axis=1)
    greater = np.empty(pos_rows.size, dtype=np.int64)
    step = max(1, CHUNK_CELLS // max(n_targets, 1))
    for start in range(0, pos_rows.size, step):  # bounded memory: step x n_targets booleans
        stop = start + step
        greater[start:stop] = (scores[pos_rows[start:stop]]
                               > pos_scores[start:stop, None]).sum(axis=1)
    # positives of the same row scored higher are not negatives: subtract their count
    order = np.lexsort((-pos_scores, pos_rows))
    first = np.searchsorted(pos_rows[order], pos_rows[order], side="left")
    higher_pos = np.empty(pos_rows.size, dtype=np.int64)
    higher_pos[order] = np.arange(pos_rows.size) - first
    n_neg = n_targets - n_train - n_test
    neg_row = n_neg[pos_rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_pos = np.where(neg_row > 0, (neg_row - (greater - higher_pos)) / neg_row, np.nan)
    sums = np.bincount(pos_rows, weights=np.nan_to_num(per_pos), minlength=test.shape[0])
    valid = np.bincount(pos_rows, weights=~np.isnan(per_pos), minlength=test.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(valid > 0, sums / valid, np.nan)


def evaluate(
    dataset: Dataset,
    test_mask: np.ndarray,
    source_repr: np.ndarray,
    target_repr: np.ndarray,
    settings: EvaluationSettings,
    seed: int,
) -> Metrics:
    """Score the sampled held-out sources once; every metric comes from that pass."""
    train_mask = ~test_mask
    train, test = _csr(dataset, train_mask), _csr(dataset, test_mask)
    candidates = np.flatnonzero(np.diff(test.indptr) > 0)
    rng = np.random.default_rng(seed)
    if candidates.size > settings.max_sources:
        candidates = np.sort(rng.choice(candidates, settings.max_sources, replace=False))
    n_targets = dataset.n_targets
    k = max(1, min(settings.k, n_targets))
    popularity = np.bincount(dataset.cols[train_mask], minlength=n_targets).astype(np.float32)
    precision = np.zeros(candidates.size)
    recall = np.zeros(candidates.size)
    auc = np.zeros(candidates.size)
    baseline = np.zeros(candidates.size)
    step = max(1, CHUNK_CELLS // max(n_targets, 1))
    for start in range(0, candidates.size, step):  # per chunk of sources: bounded memory
        chunk = candidates[start:start + step]
        seen = train[chunk].toarray()
        held = test[chunk].toarray()
        n_test = held.sum(axis=1)
        scores = source_repr[chunk] @ target_repr.T
        scores[seen] = -np.inf
        hits = _top_k_hits(scores, held, k)
        sl = slice(start, start + chunk.size)
        precision[sl] = hits / settings.k
        recall[sl] = hits / n_test
        auc[sl] = _auc(scores, held, seen.sum(axis=1))
        pop_scores = np.broadcast_to(popularity, scores.shape).copy()
        pop_scores[seen] = -np.inf
        baseline[sl] = _top_k_hits(pop_scores, held, k) / settings.k
    if candidates.size == 0:
        return {"k": settings.k, "precision_at_k": 0.0, "recall_at_k": 0.0, "auc": 0.0,
                "baseline_precision_at_k": 0.0, "evaluated_sources": 0}
    return {
        "k": settings.k,
        "precision_at_k": round(float(precision.mean()), 6),
        "recall_at_k": round(float(recall.mean()), 6),
        "auc": round(float(np.nanmean(auc)) if np.isfinite(auc).any() else 0.0, 6),
        "baseline_precision_at_k": round(float(baseline.mean()), 6),
        "evaluated_sources": int(candidates.size),
    }
