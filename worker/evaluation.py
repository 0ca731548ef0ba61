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


def _greater_counts(matrix: np.ndarray, pos_rows: np.ndarray, pos_cols: np.ndarray) -> np.ndarray:
    """For each positive (row, col): how many cells of its row score strictly higher."""
    n_cols = matrix.shape[1]
    values = matrix[pos_rows, pos_cols]
    greater = np.empty(pos_rows.size, dtype=np.int64)
    step = max(1, CHUNK_CELLS // max(n_cols, 1))
    for start in range(0, pos_rows.size, step):  # bounded memory: step x n_cols booleans
        stop = start + step
        greater[start:stop] = (matrix[pos_rows[start:stop]] > values[start:stop, None]).sum(axis=1)
    return greater


def _auc(values: np.ndarray, greater: np.ndarray, pos_rows: np.ndarray, n_rows: int,
         n_neg: np.ndarray) -> np.ndarray:
    """Per-row AUC of the positives against every target neither train nor test."""
    # positives of the same row scored higher are not negatives: subtract their count
    order = np.lexsort((-values, pos_rows))
    first = np.searchsorted(pos_rows[order], pos_rows[order], side="left")
    higher_pos = np.empty(pos_rows.size, dtype=np.int64)
    higher_pos[order] = np.arange(pos_rows.size) - first
    neg_row = n_neg[pos_rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_pos = np.where(neg_row > 0, (neg_row - (greater - higher_pos)) / neg_row, np.nan)
    sums = np.bincount(pos_rows, weights=np.nan_to_num(per_pos), minlength=n_rows)
    valid = np.bincount(pos_rows, weights=~np.isnan(per_pos), minlength=n_rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc: np.ndarray = np.where(valid > 0, sums / valid, np.nan)
    return auc


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
    # popularity as distinct ranks (ties broken by index, as a stable sort would): exact
    # in float32, so "how many targets rank higher" needs no tie handling
    popularity = np.bincount(dataset.cols[train_mask], minlength=n_targets)
    pop_rank = np.empty(n_targets, dtype=np.float32)
    pop_rank[np.argsort(-popularity, kind="stable")] = np.arange(n_targets, 0, -1)
    precision = np.zeros(candidates.size)
    recall = np.zeros(candidates.size)
    auc = np.zeros(candidates.size)
    baseline = np.zeros(candidates.size)
    step = max(1, CHUNK_CELLS // max(n_targets, 1))
    for start in range(0, candidates.size, step):  # per chunk of sources: bounded memory
        chunk = candidates[start:start + step]
        seen = train[chunk].toarray()
        held = test[chunk]
        pos_rows, pos_cols = held.nonzero()
        n_test = np.diff(held.indptr)
        scores = source_repr[chunk] @ target_repr.T
        scores[seen] = -np.inf
        greater = _greater_counts(scores, pos_rows, pos_cols)
        # a held-out target is in the top k when fewer than k targets score higher
        hits = np.bincount(pos_rows, weights=greater < k, minlength=chunk.size)
        ranks = np.broadcast_to(pop_rank, scores.shape).copy()
        ranks[seen] = -1.0
        pop_hits = np.bincount(pos_rows, weights=_greater_counts(ranks, pos_rows, pos_cols) < k,
                               minlength=chunk.size)
        sl = slice(start, start + chunk.size)
        precision[sl] = hits / settings.k
        recall[sl] = hits / n_test
        n_neg = n_targets - seen.sum(axis=1) - n_test
        auc[sl] = _auc(scores[pos_rows, pos_cols], greater, pos_rows, chunk.size, n_neg)
        baseline[sl] = pop_hits / settings.k
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
