"""Pure top-k scoring: matches a brute-force full sort, honours exclusions, bounded blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.models import scoring


def brute_force(scores: np.ndarray, k: int) -> list[list[int]]:
    """Full stable sort per row, dropping excluded (-inf) targets."""
    out = []
    for row in scores:
        order = np.argsort(-row, kind="stable")
        out.append([int(c) for c in order if np.isfinite(row[c])][:k])
    return out


def as_lists(top: scoring.TopK, b: int) -> list[list[int]]:
    result: list[list[int]] = [[] for _ in range(b)]
    for row, col in zip(top.rows.tolist(), top.cols.tolist(), strict=True):
        result[row].append(col)
    return result


@pytest.mark.parametrize(
    ("b", "n", "k"), [(5, 40, 3), (7, 1000, 10), (3, 5000, 1), (4, 20, 50), (2, 3000, 400)]
)
def test_top_k_matches_a_full_sort(b: int, n: int, k: int) -> None:
    # Given random scores; when taking the top k; then they equal a brute-force full sort.
    rng = np.random.default_rng(b * n + k)
    scores = rng.standard_normal((b, n)).astype(np.float32)
    top = scoring.top_k(scores, k)
    assert as_lists(top, b) == brute_force(scores, k)
    # Ranks are 1-based and consecutive per row; scores are the rows' own, descending.
    for row in range(b):
        sel = top.rows == row
        assert top.ranks[sel].tolist() == list(range(1, int(sel.sum()) + 1))
        assert np.all(np.diff(top.scores[sel]) <= 0)
        assert np.array_equal(top.scores[sel], scores[row, top.cols[sel]])


def test_top_k_skips_excluded_targets_and_shortens_rows() -> None:
    # Given a row where all but two targets are excluded; then only those two come back.
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((2, 10_000)).astype(np.float32)
    scores[0, :] = -np.inf
    scores[0, [17, 9000]] = [0.5, 2.0]
    top = scoring.top_k(scores, 10)
    lists = as_lists(top, 2)
    assert lists[0] == [9000, 17]
    assert lists == brute_force(scores, 10)


def test_top_k_whole_row_excluded_yields_nothing_for_it() -> None:
    scores = np.full((2, 100), -np.inf, dtype=np.float32)
    scores[1, 3] = 1.0
    top = scoring.top_k(scores, 5)
    assert top.rows.tolist() == [1]
    assert top.cols.tolist() == [3]


def test_score_block_equals_lightfm_formula() -> None:
    # Given LightFM-style embeddings and biases packed as [emb, bias, 1] / [emb, 1, bias].
    rng = np.random.default_rng(2)
    k = 8
    ue, ie = rng.standard_normal((4, k)), rng.standard_normal((30, k))
    ub, ib = rng.standard_normal(4), rng.standard_normal(30)
    src = np.hstack([ue, ub[:, None], np.ones((4, 1))]).astype(np.float32)
    tgt = np.hstack([ie, np.ones((30, 1)), ib[:, None]]).astype(np.float32)
    expected = ue @ ie.T + ub[:, None] + ib[None, :]
    buffer = np.empty(4 * 30 + 7, dtype=np.float32)
    got = scoring.score_block(src, tgt, out=buffer)
    assert got.shape == (4, 30)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scoring.score_block(src, tgt), expected, rtol=1e-5, atol=1e-5)


def test_mask_seen_uses_the_csr_rows_and_ignores_unknown_sources() -> None:
    # Given source 0 saw targets {1, 3}, source 1 nothing, source 2 saw {0}.
    indptr = np.array([0, 2, 2, 3], dtype=np.int64)
    indices = np.array([1, 3, 0], dtype=np.int32)
    scores = np.zeros((4, 5), dtype=np.float32)
    # Block rows: artifact rows 2, 0, -1 (unseen source), 1.
    scoring.mask_seen(scores, np.array([2, 0, -1, 1]), indptr, indices)
    assert np.isneginf(scores).nonzero()[0].tolist() == [0, 1, 1]
    assert np.isneginf(scores).nonzero()[1].tolist() == [0, 1, 3]


def test_block_rows_bounds_the_score_matrix() -> None:
    assert scoring.block_rows(100_000) * 100_000 * 4 <= scoring.BLOCK_BUDGET_BYTES
    assert scoring.block_rows(10) == scoring.MAX_BLOCK_ROWS
    assert scoring.block_rows(10**12) == 1


def test_popularity_order_and_shares() -> None:
    popularity = np.array([0.1, 0.4, 0.1, 0.4], dtype=np.float32)
    order = scoring.popularity_order(popularity)
    assert order.tolist() == [1, 3, 0, 2]
    cols, shares = scoring.popular(order, popularity, 3)
    assert cols.tolist() == [1, 3, 0]
    assert shares.dtype == np.float32
    np.testing.assert_allclose(shares, [0.4, 0.4, 0.1])


def test_cold_start_repr_is_weighted_feature_sum() -> None:
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    bias = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    rep = scoring.cold_start_repr(np.array([1, 3]), np.array([0.25, 0.75]), emb, bias)
    np.testing.assert_allclose(rep, [0.25 * 3 + 0.75 * 9, 0.25 * 4 + 0.75 * 10,
                                     0.25 * 5 + 0.75 * 11, 0.25 * 2 + 0.75 * 4, 1.0])


@settings(max_examples=150, deadline=None)
@given(
    b=st.integers(1, 6),
    n=st.integers(1, 3000),
    k=st.integers(1, 60),
    levels=st.integers(1, 10**6),
    excluded=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_top_k_equals_a_stable_full_sort_even_with_ties_and_exclusions(
    b: int, n: int, k: int, levels: int, excluded: float, seed: int
) -> None:
    # Given few distinct score values (many ties) and some excluded targets,
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, (b, n)).astype(np.float32)
    scores[rng.random((b, n)) < excluded] = -np.inf
    # when taking the top k, then it is exactly the stable full sort's first k.
    assert as_lists(scoring.top_k(scores, k), b) == brute_force(scores, k)
