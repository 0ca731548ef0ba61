"""Holdout metrics from one numpy scoring pass (never ``lightfm.evaluation``).

``lightfm.evaluation`` scores every target for every source once per metric
(DESIGN.md, "Known pitfalls"). Here the scores of at most ``max_sources``
sampled sources are computed once, chunk by chunk, as one matrix product,
and precision@k, recall@k, AUC and the most-popular baseline's precision@k
all come from that pass. Training pairs are excluded from the ranking, as
LightFM's own metrics do with ``train_interactions``. The most-popular
baseline needs no scores at all: a held-out target's rank follows from its
popularity position and the source's seen targets (sparse), so no dense
matrix is built for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from shared.contracts import EVALUATION_DEFAULTS, Metrics
from shared.data.assembly import Dataset

#: Scores held in memory at once (float32 cells) while evaluating: about 64 MiB.
CHUNK_CELLS = 1 << 24


@dataclass(frozen=True)
class EvaluationSettings:
    """docs/api.md ``evaluation``: holdout fraction (0 turns it off), sources scored, k."""

    holdout: float = EVALUATION_DEFAULTS["holdout"]
    max_sources: int = EVALUATION_DEFAULTS["max_sources"]
    k: int = EVALUATION_DEFAULTS["k"]


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


def _count_greater(matrix: np.ndarray, values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per row of ``matrix``: how many cells are strictly greater than that row's value."""
    flags = np.greater(matrix, values[:, None], out=out[:matrix.shape[0]])
    counts: np.ndarray = flags.view(np.uint8).sum(axis=1, dtype=np.int64)
    return counts


def _greater_counts(scores: np.ndarray, pos_rows: np.ndarray, pos_cols: np.ndarray,
                    indptr: np.ndarray) -> np.ndarray:
    """For each positive (row, col), rows in order: how many cells of its row score higher.

    Every row has at least one positive. The first positive of each row is
    compared in place against its whole row (no copy); only the rows' further
    positives gather their row, in blocks, so memory stays bounded.
    """
    n_rows, n_cols = scores.shape
    values = scores[pos_rows, pos_cols]
    greater = np.empty(pos_rows.size, dtype=np.int64)
    first = indptr[:-1]
    rest = np.ones(pos_rows.size, dtype=bool)
    rest[first] = False
    rest_idx = np.flatnonzero(rest)
    step = max(1, CHUNK_CELLS // max(n_cols, 1))
    buffer = np.empty((max(n_rows, min(step, rest_idx.size)), n_cols), dtype=np.bool_)
    greater[first] = _count_greater(scores, values[first], buffer)
    for start in range(0, rest_idx.size, step):  # bounded memory: step x n_cols cells
        block = rest_idx[start:start + step]
        greater[block] = _count_greater(scores[pos_rows[block]], values[block], buffer)
    return greater


def _popularity_hits(train: sp.csr_matrix, test: sp.csr_matrix, pop_pos: np.ndarray,
                     k: int) -> np.ndarray:
    """Held-out targets per row that the most-popular list (minus seen targets) puts in the top k.

    A held-out target at popularity position ``p`` (0 = most popular) is
    outranked by the ``p`` targets before it, less the row's seen targets
    among them; counted with one sorted key array, no dense matrix.
    """
    n_rows = train.shape[0]
    span = np.int64(pop_pos.size + 1)
    train_rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(train.indptr))
    seen_keys = np.sort(train_rows * span + pop_pos[train.indices])
    test_rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(test.indptr))
    positions = pop_pos[test.indices]
    seen_before = (np.searchsorted(seen_keys, test_rows * span + positions)
                   - np.searchsorted(seen_keys, test_rows * span))
    hits: np.ndarray = np.bincount(test_rows, weights=(positions - seen_before) < k,
                                   minlength=n_rows)
    return hits


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
    if candidates.size == 0:
        return {"k": settings.k, "precision_at_k": 0.0, "recall_at_k": 0.0, "auc": 0.0,
                "baseline_precision_at_k": 0.0, "evaluated_sources": 0}
    n_targets = dataset.n_targets
    k = max(1, min(settings.k, n_targets))
    train, test = train[candidates], test[candidates]  # row i = candidates[i]
    # most popular first, ties by index (as a stable sort orders them)
    popularity = np.bincount(dataset.cols[train_mask], minlength=n_targets)
    pop_pos = np.empty(n_targets, dtype=np.int64)
    pop_pos[np.argsort(-popularity, kind="stable")] = np.arange(n_targets)
    baseline = _popularity_hits(train, test, pop_pos, k) / settings.k
    n_seen, n_test = np.diff(train.indptr), np.diff(test.indptr)
    hits = np.zeros(candidates.size)
    auc = np.zeros(candidates.size)
    step = max(1, CHUNK_CELLS // max(n_targets, 1))
    for start in range(0, candidates.size, step):  # per chunk of sources: bounded memory
        stop = min(start + step, candidates.size)
        seen, held = train[start:stop], test[start:stop]
        scores = source_repr[candidates[start:stop]] @ target_repr.T
        scores[np.repeat(np.arange(stop - start), np.diff(seen.indptr)), seen.indices] = -np.inf
        pos_rows = np.repeat(np.arange(stop - start), np.diff(held.indptr))
        greater = _greater_counts(scores, pos_rows, held.indices, held.indptr)
        # a held-out target is in the top k when fewer than k targets score higher
        hits[start:stop] = np.bincount(pos_rows, weights=greater < k, minlength=stop - start)
        n_neg = n_targets - n_seen[start:stop] - n_test[start:stop]
        auc[start:stop] = _auc(scores[pos_rows, held.indices], greater, pos_rows,
                               stop - start, n_neg)
    precision, recall = hits / settings.k, hits / n_test
    return {
        "k": settings.k,
        "precision_at_k": round(float(precision.mean()), 6),
        "recall_at_k": round(float(recall.mean()), 6),
        "auc": round(float(np.nanmean(auc)) if np.isfinite(auc).any() else 0.0, 6),
        "baseline_precision_at_k": round(float(baseline.mean()), 6),
        "evaluated_sources": int(candidates.size),
    }
