"""Recommendations shaped by the request: filters, candidate lists, exclusions, new targets.

:func:`resolve` turns a request's :class:`Shape` into :class:`Candidates`: the
target columns the request may return, over the model's targets (plus, with
``new_targets``, the scorable new targets of the :class:`TargetIndex`). A
restrictive shape (a filter passing few targets, a candidate list) keeps only
its columns and scores just those rows; a permissive one scores every target
and sets the blocked columns to -inf. Either way the same exact
:func:`shared.models.scoring.top_k` picks the best k of what is left, so a
source gets ``k`` rows as long as ``k`` targets pass.

:func:`recommend_shaped` yields :class:`ShapedBlock`, a :class:`RecBlock` with
the source row and target column of every row, so :func:`because`
(explanations) and the index's entity records can decorate it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from shared.data.filters import Condition
from shared.models import scoring
from shared.models.blocks import RecBlock, _Buffers, _in_order
from shared.models.serving import LoadedModel, MetadataLookup
from shared.models.target_index import TargetIndex

#: Above this share of the space passing, score every target and block the rest.
GATHER_SHARE = 0.5
#: Targets from a source's history an explanation names.
BECAUSE = 3


@dataclass(frozen=True)
class Shape:
    """What a request asks of its targets (API.md, "Recommendations")."""

    conditions: tuple[Condition, ...] = ()
    include_ids: tuple[str, ...] | None = None
    exclude_ids: tuple[str, ...] = ()
    new_targets: bool = False

    @property
    def plain(self) -> bool:
        """True when nothing shapes the answer (the unshaped fast path applies)."""
        return (not self.conditions and self.include_ids is None and not self.exclude_ids
                and not self.new_targets)


@dataclass
class Candidates:
    """The columns a request may return, and the target matrix scored for it."""

    #: Scoring space size (known targets, plus new targets when asked for).
    n_space: int
    #: Sorted passing columns, or None when the whole space is scored.
    cols: np.ndarray | None
    #: Target representations scored: the whole space, or the rows of ``cols``.
    reprs: np.ndarray
    #: Columns set to -inf when the whole space is scored.
    blocked: np.ndarray | None
    #: Distinct ``include_ids`` that name no target of the space, in request order.
    unknown_ids: list[str] = field(default_factory=list)
    #: Passing mask over the space (None: everything passes).
    allowed: np.ndarray | None = None

    def popular(self, model: LoadedModel, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most popular passing known targets (columns, float32 shares)."""
        popularity = model.artifact.target_popularity
        if self.cols is not None:  # few columns: sort them (ties by column, as pop_order)
            known = self.cols[self.cols < model.n_targets]
            shares = np.asarray(popularity, dtype=np.float32)[known]
            return scoring.popular(known[np.argsort(-shares, kind="stable")], popularity, k)
        order = np.asarray(model.pop_order, dtype=np.int64)
        if self.allowed is not None:
            order = order[self.allowed[order]]
        return scoring.popular(order, popularity, k)


def resolve(model: LoadedModel, index: TargetIndex | None, shape: Shape) -> Candidates:
    """The candidates of ``shape`` (``index`` is needed for any shaping; None when plain)."""
    art = model.artifact
    if index is None or shape.plain:
        return Candidates(model.n_targets, None, art.target_repr, None)
    reprs, _ = index.space(shape.new_targets)
    mask, cols, gathered = index.mask(shape.conditions, shape.new_targets)
    n_space = len(mask)
    unknown: list[str] = []
    if shape.include_ids is None and not shape.exclude_ids:
        if len(cols) == n_space:
            return Candidates(n_space, None, reprs, None)
        return Candidates(n_space, cols, gathered, None, allowed=mask)
    excluded = np.zeros(0, dtype=np.int64)
    if shape.exclude_ids:
        rows = index.rows_of(list(shape.exclude_ids))
        excluded = rows[(rows >= 0) & (rows < n_space)]
    if shape.include_ids is not None:
        # A candidate list: work on its rows only (no pass over the whole space).
        wanted = list(dict.fromkeys(shape.include_ids))
        rows = index.rows_of(wanted)
        inside = (rows >= 0) & (rows < n_space)
        unknown = [w for w, ok in zip(wanted, inside.tolist(), strict=True) if not ok]
        passing = np.unique(rows[inside])
        passing = passing[mask[passing] & ~np.isin(passing, excluded)]
        return Candidates(n_space, passing, np.ascontiguousarray(reprs[passing]), None,
                          unknown)
    allowed = mask.copy()
    allowed[excluded] = False
    passing = np.flatnonzero(allowed)
    if len(passing) <= GATHER_SHARE * n_space:
        return Candidates(n_space, passing, np.ascontiguousarray(reprs[passing]), None,
                          unknown, allowed)
    return Candidates(n_space, None, reprs, np.flatnonzero(~allowed), unknown, allowed)


def mask_columns(scores: np.ndarray, cand: Candidates, block_rows: np.ndarray,
                 cols: np.ndarray) -> None:
    """Set (block row, space column) pairs to -inf in ``scores`` over the candidates."""
    if len(cols) == 0:
        return
    if cand.cols is None:
        scores[block_rows, cols] = -np.inf
        return
    pos = np.searchsorted(cand.cols, cols)
    hit = pos < len(cand.cols)
    hit[hit] = cand.cols[pos[hit]] == cols[hit]
    scores[block_rows[hit], pos[hit]] = -np.inf


def top_candidates(scores: np.ndarray, cand: Candidates, k: int) -> scoring.TopK:
    """Top-k of scores over the candidates, columns given in the scoring space."""
    if cand.blocked is not None and len(cand.blocked):
        scores[:, cand.blocked] = -np.inf
    top = scoring.top_k(scores, k)
    if cand.cols is None:
        return top
    return top._replace(cols=cand.cols[top.cols])


class ShapedBlock(NamedTuple):
    """Rows of a block with each row's source row (-1: unseen source) and target column."""

    rec: RecBlock
    source_rows: np.ndarray
    cols: np.ndarray


def recommend_shaped(
    model: LoadedModel,
    index: TargetIndex | None,
    cand: Candidates,
    source_ids: Sequence[str] | None,
    k: int,
    exclude_seen: bool,
    lookup: MetadataLookup | None = None,
    executor: Executor | None = None,
) -> Iterator[ShapedBlock]:
    """The given sources (None: every source of the model), block by block, shaped."""
    art = model.artifact
    n = len(source_ids) if source_ids is not None else model.n_sources
    if n == 0:
        return iter(())
    step = scoring.block_rows(max(1, cand.reprs.shape[0]))
    buffers = _Buffers(min(step, n) * max(1, cand.reprs.shape[0]))
    ids_all = index.ids if index is not None else np.asarray(art.target_ids)

    def task(start: int) -> ShapedBlock:
        if source_ids is None:
            rows = np.arange(start, min(start + step, n), dtype=np.int64)
            ids = np.asarray(art.source_ids[rows])
        else:
            ids = np.asarray(source_ids[start : start + step], dtype=str)
            rows = model.rows_of(ids)
        with buffers.take() as buffer:
            return _block(model, cand, ids, rows, k, exclude_seen, lookup, buffer, ids_all)

    return _in_order(task, range(0, n, step), executor)


def _cold(model: LoadedModel, ids: np.ndarray, unseen: np.ndarray,
          lookup: MetadataLookup | None) -> tuple[list[int], list[np.ndarray]]:
    positions: list[int] = []
    reprs: list[np.ndarray] = []
    if len(unseen) and lookup is not None and model.has_metadata_features:
        for pos in unseen.tolist():  # one entity record per unseen source
            metadata = lookup(str(ids[pos]))
            rep = model.cold_repr(metadata) if metadata else None
            if rep is not None:
                positions.append(pos)
                reprs.append(rep)
    return positions, reprs


def _block(
    model: LoadedModel, cand: Candidates, ids: np.ndarray, rows: np.ndarray, k: int,
    exclude_seen: bool, lookup: MetadataLookup | None, buffer: np.ndarray,
    ids_all: np.ndarray,
) -> ShapedBlock:
    """One block: known and cold-started sources scored, the rest given popular targets."""
    art = model.artifact
    known = np.flatnonzero(rows >= 0)
    unseen = np.flatnonzero(rows < 0)
    cold_pos, cold_reprs = _cold(model, ids, unseen, lookup)
    scored = np.concatenate([known, np.asarray(cold_pos, dtype=np.int64)])
    pop_pos = np.setdiff1d(unseen, scored, assume_unique=True)
    parts: list[tuple[np.ndarray, ...]] = []
    if len(scored):
        reprs = np.empty((len(scored), art.source_repr.shape[1]), dtype=np.float32)
        reprs[: len(known)] = art.source_repr[rows[known]]
        if cold_reprs:
            reprs[len(known):] = np.stack(cold_reprs)
        scores = scoring.score_block(reprs, cand.reprs, out=buffer)
        if exclude_seen and len(known):
            block_row, seen = scoring.csr_pairs(rows[known], art.seen_indptr, art.seen_indices)
            mask_columns(scores, cand, block_row, seen)
        top = top_candidates(scores, cand, k)
        positions = scored[top.rows]
        parts.append((positions, top.cols, top.ranks, top.scores, rows[positions] < 0))
    if len(pop_pos):
        cols, shares = cand.popular(model, k)
        m = len(cols)
        parts.append((np.repeat(pop_pos, m), np.tile(cols, len(pop_pos)),
                      np.tile(np.arange(1, m + 1, dtype=np.int64), len(pop_pos)),
                      np.tile(shares, len(pop_pos)), np.ones(m * len(pop_pos), dtype=bool)))
    if not parts or not sum(len(p[0]) for p in parts):
        empty = np.zeros(0, dtype=np.int64)
        text = np.zeros(0, dtype="<U1")
        return ShapedBlock(RecBlock(text, text, empty, np.zeros(0, np.float32),
                                    np.zeros(0, dtype=bool)), empty, empty)
    positions, cols, ranks, scores_, fallback = (np.concatenate(p) for p in zip(*parts,
                                                                               strict=True))
    order = np.lexsort((ranks, positions))
    positions, cols = positions[order], cols[order]
    rec = RecBlock(ids[positions], np.asarray(ids_all[cols]), ranks[order],
                   scores_[order].astype(np.float32), fallback[order])
    return ShapedBlock(rec, rows[positions], cols)


def because(model: LoadedModel, normed: np.ndarray, source_rows: np.ndarray,
            cols: np.ndarray, limit: int = BECAUSE) -> list[list[str]]:
    """Per row, up to ``limit`` targets of the source's own history most like the target.

    Cosine of the unit target embeddings ``normed``; the target itself is never its own
    reason. Rows of a source without history get an empty list.
    """
    art = model.artifact
    out: list[list[str]] = [[] for _ in range(len(cols))]
    if len(cols) == 0:
        return out
    starts = np.flatnonzero(np.r_[True, source_rows[1:] != source_rows[:-1]])
    ends = np.r_[starts[1:], len(cols)]
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        row = int(source_rows[lo])
        if row < 0:
            continue
        history = np.asarray(art.seen_indices[art.seen_indptr[row]:art.seen_indptr[row + 1]],
                             dtype=np.int64)
        if len(history) == 0:
            continue
        sims = normed[cols[lo:hi]] @ normed[history].T  # (rows, history)
        sims[cols[lo:hi, None] == history[None, :]] = -np.inf
        take = min(limit, len(history))
        best = np.argsort(-sims, axis=1, kind="stable")[:, :take]
        for i, picks in enumerate(best.tolist()):
            out[lo + i] = [str(art.target_ids[history[p]]) for p in picks
                           if sims[i, p] > -np.inf]
    return out
