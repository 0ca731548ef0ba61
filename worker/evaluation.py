"""Holdout metrics from one numpy scoring pass (never ``lightfm.evaluation``).

``lightfm.evaluation`` scores every target for every source once per metric
(DESIGN.md, "Known pitfalls"). Here the scores of at most ``max_sources``
sampled sources are computed once, chunk by chunk, as one matrix product,
and precision@k, recall@k, AUC, NDCG@k, MAP@k and coverage all come from
that pass; the most-popular baseline's figures come from the popularity
positions alone (no score matrix: every source ranks by the same order).
Training pairs are excluded from the ranking, as LightFM's own metrics do
with ``train_interactions``. The validation curve of ``epochs: "auto"`` needs
precision@k alone after each epoch: :func:`holdout_precision` on a
:class:`Holdout` prepared once per run.
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


@dataclass(frozen=True)
class Holdout:
    """A holdout prepared once per evaluation fit: the sampled sources' seen and held-out pairs.

    Row ``i`` of ``train`` and ``test`` is source ``candidates[i]``.
    """

    candidates: np.ndarray  # (n,) int64 source rows, sorted
    train: sp.csr_matrix  # (n, n_targets) pairs the fit saw: excluded from the ranking
    test: sp.csr_matrix  # (n, n_targets) held-out pairs: the relevant targets
    pop_pos: np.ndarray  # (n_targets,) int64 popularity position on the train pairs, 0 = top
    k: int  # settings.k clipped to the number of targets
    settings_k: int


def prepare_holdout(dataset: Dataset, test_mask: np.ndarray, settings: EvaluationSettings,
                    seed: int) -> Holdout:
    """Sample at most ``max_sources`` sources with held-out pairs and slice their rows."""
    train_mask = ~test_mask
    train, test = _csr(dataset, train_mask), _csr(dataset, test_mask)
    candidates = np.flatnonzero(np.diff(test.indptr) > 0)
    rng = np.random.default_rng(seed)
    if candidates.size > settings.max_sources:
        candidates = np.sort(rng.choice(candidates, settings.max_sources, replace=False))
    n_targets = dataset.n_targets
    # most popular first, ties by index (as a stable sort orders them)
    popularity = np.bincount(dataset.cols[train_mask], minlength=n_targets)
    pop_pos = np.empty(n_targets, dtype=np.int64)
    pop_pos[np.argsort(-popularity, kind="stable")] = np.arange(n_targets)
    return Holdout(candidates=candidates, train=train[candidates], test=test[candidates],
                   pop_pos=pop_pos, k=max(1, min(settings.k, n_targets)),
                   settings_k=settings.k)


@dataclass
class _Sums:
    """Per-source sums of one ranking (model or baseline) over the chunks."""

    hits: np.ndarray
    ndcg: np.ndarray
    ap: np.ndarray
    covered: np.ndarray  # (n_targets,) bool


def _top_k_cols(scores: np.ndarray, k: int, covered: np.ndarray) -> None:
    """Mark the targets in each row's top k (finite scores only), in row blocks."""
    n_rows, n_cols = scores.shape
    step = max(1, (CHUNK_CELLS >> 4) // max(n_cols, 1))  # argpartition copies as int64
    for start in range(0, n_rows, step):
        block = scores[start:start + step]
        top = np.argpartition(block, n_cols - k, axis=1)[:, n_cols - k:]
        finite = np.isfinite(np.take_along_axis(block, top, axis=1))
        covered[top[finite]] = True


def _rank_sums(scores: np.ndarray, held: sp.csr_matrix, k: int, sums: _Sums,
               rows: slice) -> tuple[np.ndarray, np.ndarray]:
    """Add one chunk's hits, NDCG@k, AP@k and top-k targets to ``sums``; (greater, pos_rows).

    A held-out target's rank is 1 + the number of targets scored strictly
    higher (seen targets score -inf).
    """
    pos_rows = np.repeat(np.arange(scores.shape[0]), np.diff(held.indptr))
    greater = _greater_counts(scores, pos_rows, held.indices, held.indptr)
    _hit_sums(greater, pos_rows, np.diff(held.indptr), k, sums, rows)
    _top_k_cols(scores, k, sums.covered)
    return greater, pos_rows


def _hit_sums(greater: np.ndarray, pos_rows: np.ndarray, n_test: np.ndarray, k: int,
              sums: _Sums, rows: slice) -> None:
    """Hits, NDCG@k and AP@k of ``rows`` from each held-out target's count of higher targets.

    A target is a hit when its rank (1 + ``greater``) is at most k. AP@k sums,
    over the hits, the share of hits at or above each hit's rank, divided by
    min(k, held-out count); NDCG@k uses binary relevance.
    """
    n = n_test.size
    in_top = greater < k
    ideal = np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))[np.minimum(n_test, k) - 1]
    gain = np.where(in_top, 1.0 / np.log2(greater + 2.0), 0.0)
    order = np.lexsort((greater, pos_rows))
    sorted_rows = pos_rows[order]
    nth = np.arange(order.size) - np.searchsorted(sorted_rows, sorted_rows, side="left")
    sorted_greater = greater[order]
    precision_at_hit = np.where(sorted_greater < k, (nth + 1) / (sorted_greater + 1.0), 0.0)
    sums.hits[rows] = np.bincount(pos_rows, weights=in_top, minlength=n)
    sums.ndcg[rows] = np.bincount(pos_rows, weights=gain, minlength=n) / ideal
    sums.ap[rows] = (np.bincount(sorted_rows, weights=precision_at_hit, minlength=n)
                     / np.minimum(n_test, k))


def _baseline_sums(holdout: Holdout, n_targets: int) -> _Sums:
    """The most-popular baseline's sums, without a score matrix.

    Every source ranks its unseen targets in the same popularity order, so a
    held-out target at popularity position ``p`` has ``p`` minus the number of
    the source's seen targets above it ranked higher; and the source's j-th
    unseen target (its top k) sits at position ``j + #{i: a_i - i <= j}`` for
    its seen positions ``a_0 < a_1 < ...``. Equal to ranking a full matrix of
    popularity scores with the seen targets masked (ties cannot occur).
    """
    n, k = holdout.candidates.size, holdout.k
    sums = _Sums(np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n_targets, bool))
    seen, held = holdout.train, holdout.test
    seen_rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(seen.indptr))
    keys = np.sort(seen_rows * n_targets + holdout.pop_pos[seen.indices])  # rows stay grouped
    starts = seen.indptr[:-1].astype(np.int64)
    pos_rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(held.indptr))
    held_pos = holdout.pop_pos[held.indices]
    greater = held_pos - (np.searchsorted(keys, pos_rows * n_targets + held_pos) - starts[pos_rows])
    _hit_sums(greater, pos_rows, np.diff(held.indptr), k, sums, slice(0, n))
    within = np.arange(keys.size) - starts[seen_rows]
    shifted = seen_rows * n_targets + (keys - seen_rows * n_targets - within)  # sorted too
    j = np.tile(np.arange(k, dtype=np.int64), n)
    j_rows = np.repeat(np.arange(n, dtype=np.int64), k)
    top = j + np.searchsorted(shifted, j_rows * n_targets + j, side="right") - starts[j_rows]
    by_position = np.empty(n_targets, dtype=np.int64)
    by_position[holdout.pop_pos] = np.arange(n_targets)
    sums.covered[by_position[top[top < n_targets]]] = True
    return sums


def _chunks(holdout: Holdout, n_targets: int) -> list[slice]:
    step = max(1, CHUNK_CELLS // max(n_targets, 1))  # per chunk of sources: bounded memory
    n = holdout.candidates.size
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def _masked(scores: np.ndarray, seen: sp.csr_matrix) -> np.ndarray:
    scores[np.repeat(np.arange(scores.shape[0]), np.diff(seen.indptr)), seen.indices] = -np.inf
    return scores


def holdout_precision(holdout: Holdout, source_repr: np.ndarray,
                      target_repr: np.ndarray) -> float:
    """precision@k alone (the validation curve's figure), from one scoring pass."""
    if holdout.candidates.size == 0:
        return 0.0
    hits = 0.0
    for rows in _chunks(holdout, target_repr.shape[0]):
        held = holdout.test[rows]
        scores = _masked(source_repr[holdout.candidates[rows]] @ target_repr.T,
                         holdout.train[rows])
        pos_rows = np.repeat(np.arange(scores.shape[0]), np.diff(held.indptr))
        greater = _greater_counts(scores, pos_rows, held.indices, held.indptr)
        hits += float(np.count_nonzero(greater < holdout.k))
    return round(hits / holdout.settings_k / holdout.candidates.size, 6)


def evaluate(
    dataset: Dataset,
    test_mask: np.ndarray,
    source_repr: np.ndarray,
    target_repr: np.ndarray,
    settings: EvaluationSettings,
    seed: int,
) -> Metrics:
    """Score the sampled held-out sources once; every metric comes from that pass."""
    return evaluate_holdout(prepare_holdout(dataset, test_mask, settings, seed),
                            source_repr, target_repr)


def _empty(k: int) -> Metrics:
    return {"k": k, "precision_at_k": 0.0, "recall_at_k": 0.0, "auc": 0.0, "ndcg_at_k": 0.0,
            "map_at_k": 0.0, "coverage": 0.0, "baseline_precision_at_k": 0.0,
            "baseline_ndcg_at_k": 0.0, "baseline_map_at_k": 0.0, "baseline_coverage": 0.0,
            "evaluated_sources": 0}


def evaluate_holdout(holdout: Holdout, source_repr: np.ndarray,
                     target_repr: np.ndarray) -> Metrics:
    """Every metric of the model and of the most-popular baseline on a prepared holdout.

    The baseline ranks unseen targets by popularity on the training pairs
    (ties by index); its figures come from those positions directly
    (:func:`_baseline_sums`), through the same hit, NDCG and AP code as the model's.
    """
    n = holdout.candidates.size
    if n == 0:
        return _empty(holdout.settings_k)
    n_targets, k = target_repr.shape[0], holdout.k
    model = _Sums(np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n_targets, bool))
    auc = np.zeros(n)
    n_seen, n_test = np.diff(holdout.train.indptr), np.diff(holdout.test.indptr)
    for rows in _chunks(holdout, n_targets):
        seen, held = holdout.train[rows], holdout.test[rows]
        scores = _masked(source_repr[holdout.candidates[rows]] @ target_repr.T, seen)
        greater, pos_rows = _rank_sums(scores, held, k, model, rows)
        n_neg = n_targets - n_seen[rows] - n_test[rows]
        auc[rows] = _auc(scores[pos_rows, held.indices], greater, pos_rows,
                         scores.shape[0], n_neg)
        del scores
    base = _baseline_sums(holdout, n_targets)
    return {
        "k": holdout.settings_k,
        "precision_at_k": _mean(model.hits / holdout.settings_k),
        "recall_at_k": _mean(model.hits / n_test),
        "auc": round(float(np.nanmean(auc)) if np.isfinite(auc).any() else 0.0, 6),
        "ndcg_at_k": _mean(model.ndcg),
        "map_at_k": _mean(model.ap),
        "coverage": round(float(model.covered.mean()), 6),
        "baseline_precision_at_k": _mean(base.hits / holdout.settings_k),
        "baseline_ndcg_at_k": _mean(base.ndcg),
        "baseline_map_at_k": _mean(base.ap),
        "baseline_coverage": round(float(base.covered.mean()), 6),
        "evaluated_sources": int(n),
    }


def _mean(values: np.ndarray) -> float:
    return round(float(values.mean()), 6)
