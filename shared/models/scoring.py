"""Pure numpy top-k scoring over precomputed representations (no Redis, no Flask, no LightFM).

A model artifact stores ``source_repr`` rows ``[embedding, bias, 1]`` and
``target_repr`` rows ``[embedding, 1, bias]`` (float32), so one matrix
product gives LightFM's predict score (dot product plus both biases) for a
whole block of sources at once.

Top-k selection. ``np.argpartition`` over 100,000 targets costs about 2 ms
per source, which alone would blow the bulk budget. :func:`top_k` instead
splits each row into k chunks and takes the smallest of the k chunk maxima
as a threshold: those maxima are k distinct scores of the row, so at least k
scores reach the threshold and the result is exact. One vectorised
comparison keeps the few dozen candidates at or above it, and only those are
sorted. Equal scores are ordered by target index, as a stable full sort would.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: Bytes of float32 scores one block may hold; bounds the memory of bulk requests.
BLOCK_BUDGET_BYTES = 48 << 20
#: Most sources scored by one matrix product.
MAX_BLOCK_ROWS = 1024
#: Below this many targets per requested row, partition whole rows instead of thresholding.
MIN_CHUNK = 8


class TopK(NamedTuple):
    """Flat top-k rows of a block, ordered by block row, then rank.

    rows : int64 (m,) row within the block; cols : int64 (m,) target index;
    scores : float32 (m,); ranks : int64 (m,), 1-based.
    """

    rows: np.ndarray
    cols: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray


def block_rows(n_targets: int, budget_bytes: int | None = None) -> int:
    """How many sources one block scores so its float32 score matrix stays within budget."""
    budget = BLOCK_BUDGET_BYTES if budget_bytes is None else budget_bytes
    return max(1, min(MAX_BLOCK_ROWS, budget // (4 * max(1, n_targets))))


def score_block(
    source_repr: np.ndarray, target_repr: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Scores of every target for each source row: (b, k+2) @ (n, k+2).T -> float32 (b, n).

    Pass ``out`` (a reused float32 buffer of at least b*n) to avoid page-faulting a
    fresh array for every block.
    """
    b, n = source_repr.shape[0], target_repr.shape[0]
    if b == 1:
        # One source: a matrix-vector product over the row-major targets streams memory once.
        row = out.reshape(-1)[:n] if out is not None else np.empty(n, dtype=np.float32)
        np.matmul(target_repr, source_repr[0], out=row)
        return row.reshape(1, n)
    if out is None:
        result: np.ndarray = np.matmul(source_repr, target_repr.T)
        return result
    view = out.reshape(-1)[: b * n].reshape(b, n)
    np.matmul(source_repr, target_repr.T, out=view)
    return view


def csr_pairs(
    rows: np.ndarray, indptr: np.ndarray, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(block row, column) of every stored entry of the CSR rows ``rows``, without a Python loop.

    ``rows`` may hold -1 for sources without history; they contribute nothing.
    """
    rows = np.asarray(rows, dtype=np.int64)
    valid = rows >= 0
    safe = np.where(valid, rows, 0)
    # Index the (memory-mapped) CSR arrays first, convert after: never copy them whole.
    starts = indptr[safe].astype(np.int64)
    lengths = np.where(valid, indptr[safe + 1].astype(np.int64) - starts, 0)
    total = int(lengths.sum())
    if total == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    block_row = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
    offsets = np.cumsum(lengths) - lengths
    positions = np.arange(total, dtype=np.int64) - np.repeat(offsets - starts, lengths)
    return block_row, indices[positions].astype(np.int64)


def mask_seen(
    scores: np.ndarray, rows: np.ndarray, indptr: np.ndarray, indices: np.ndarray
) -> None:
    """Set the scores of targets each source row already interacted with to -inf, in place."""
    block_row, cols = csr_pairs(rows, indptr, indices)
    if len(cols):
        scores[block_row, cols] = -np.inf


def top_k(scores: np.ndarray, k: int) -> TopK:
    """The ``k`` best finite scores of each row of ``scores`` (b, n), highest first.

    Rows with fewer than ``k`` finite scores (everything else excluded) yield fewer rows.
    """
    b, n = scores.shape
    if b == 0 or n == 0 or k < 1:
        return _empty()
    chunk = n // k
    if chunk >= MIN_CHUNK:
        # k disjoint chunks: their maxima are k distinct scores, so >= k scores pass.
        maxima = scores[:, : k * chunk].reshape(b, k, chunk).max(axis=2)
        threshold = maxima.min(axis=1)
        flat = np.flatnonzero(scores >= threshold[:, None])
    else:
        flat = np.arange(b * n, dtype=np.int64)
    values = scores.reshape(-1)[flat]
    finite = values > -np.inf
    flat, values = flat[finite], values[finite]
    if len(flat) == 0:
        return _empty()
    cand_rows = flat // n
    padded, col_mat = _pack(b, n, cand_rows, flat - cand_rows * n, values)
    width = padded.shape[1]
    if width > 2 * k:
        # Many candidates (large k): keep those at or above each row's k-th best score
        # (ties at the cut included), found by one partition, and re-pack them.
        kth = -np.partition(-padded, k - 1, axis=1)[:, k - 1]
        rows2, pos2 = np.nonzero(padded >= kth[:, None])
        padded, col_mat = _pack(b, n, rows2, col_mat[rows2, pos2], padded[rows2, pos2])
        width = padded.shape[1]
    kk = min(k, width)
    # The candidates are few: sort them all by (score desc, target index) so ties, even at
    # the cut, fall exactly as a stable full sort would put them.
    order = np.lexsort((col_mat, -padded), axis=-1)[:, :kk]
    top_vals = np.take_along_axis(padded, order, axis=1)
    top_cols = np.take_along_axis(col_mat, order, axis=1)
    keep = top_vals > -np.inf
    rows_out = np.broadcast_to(np.arange(b, dtype=np.int64)[:, None], keep.shape)[keep]
    ranks_out = np.broadcast_to(np.arange(1, kk + 1, dtype=np.int64)[None, :], keep.shape)[keep]
    return TopK(rows_out, top_cols[keep], top_vals[keep].astype(np.float32), ranks_out)


def _pack(
    b: int, n: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates (row-sorted) as (b, width) score and column matrices padded with -inf / n."""
    counts = np.bincount(rows, minlength=b)
    starts = np.cumsum(counts) - counts
    pos = np.arange(len(rows), dtype=np.int64) - np.repeat(starts, counts)
    width = int(counts.max())
    padded = np.full((b, width), -np.inf, dtype=np.float32)
    padded[rows, pos] = values
    col_mat = np.full((b, width), n, dtype=np.int64)
    col_mat[rows, pos] = cols
    return padded, col_mat


def popular(order: np.ndarray, popularity: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most popular targets (indices, float32 shares), ``order`` by popularity."""
    top = np.asarray(order[:k], dtype=np.int64)
    return top, np.asarray(popularity, dtype=np.float32)[top]


def popularity_order(popularity: np.ndarray) -> np.ndarray:
    """Target indices by popularity, highest first, ties by index (computed once per model)."""
    return np.argsort(-np.asarray(popularity, dtype=np.float32), kind="stable")


def cold_start_repr(
    indices: np.ndarray, weights: np.ndarray, embeddings: np.ndarray, biases: np.ndarray
) -> np.ndarray:
    """A source representation ``[w @ emb, w @ bias, 1]`` (float32, k+2) from metadata features."""
    idx = np.asarray(indices, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float32)
    emb = np.asarray(embeddings, dtype=np.float32)[idx]
    bias = np.asarray(biases, dtype=np.float32)[idx]
    out = np.empty(emb.shape[1] + 2, dtype=np.float32)
    out[:-2] = w @ emb
    out[-2] = float(w @ bias)
    out[-1] = 1.0
    return out


def _empty() -> TopK:
    ints = np.zeros(0, dtype=np.int64)
    return TopK(ints, ints, np.zeros(0, dtype=np.float32), ints)
