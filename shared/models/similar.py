"""Similar items: the cosine of the model's target representations, shaped like recommendations.

The unit embedding rows of a version's targets are computed once per
:class:`~shared.models.target_index.TargetIndex` (so once per version while the
entity batches stay the same); a block of query targets is then one matrix
product and the same exact top-k as recommendations, after the request's
filters, candidate list and exclusions (:mod:`shared.models.shaped`) and with
each query target blocked from its own list. A target the model never saw is
represented from its metadata features (the request's ``target_metadata``, else
its newest entity record); with none usable it gets the most popular passing
targets. Both kinds of rows carry ``fallback = True``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Executor

import numpy as np

from shared.models import scoring
from shared.models.blocks import RecBlock, _in_order
from shared.models.serving import LoadedModel, MetadataLookup
from shared.models.shaped import Candidates, mask_columns, top_candidates
from shared.models.target_index import TargetIndex, normalised, target_repr_from_metadata


def similar_blocks(
    model: LoadedModel,
    index: TargetIndex,
    cand: Candidates,
    target_ids: Sequence[str],
    k: int,
    lookup: MetadataLookup | None = None,
    executor: Executor | None = None,
) -> Iterator[RecBlock]:
    """Similar targets of each of ``target_ids`` (in request order), block by block."""
    normed = index.normed(False)
    space = normed if cand.cols is None else np.ascontiguousarray(normed[cand.cols])
    scored = Candidates(cand.n_space, cand.cols, space, cand.blocked, allowed=cand.allowed)
    step = scoring.block_rows(max(1, space.shape[0]))

    def task(start: int) -> RecBlock:
        ids = list(target_ids[start : start + step])
        return _block(model, index, scored, ids, k, lookup)

    return _in_order(task, range(0, len(target_ids), step), executor)


def _block(model: LoadedModel, index: TargetIndex, cand: Candidates, ids: list[str], k: int,
           lookup: MetadataLookup | None) -> RecBlock:
    rows = index.rows_of(ids)
    known = np.flatnonzero((rows >= 0) & (rows < index.n_known))
    queries: list[np.ndarray] = [cand.reprs[0:0]]
    cold_pos: list[int] = []
    for pos in np.setdiff1d(np.arange(len(ids)), known).tolist():
        metadata = lookup(ids[pos]) if lookup is not None else None
        rep = target_repr_from_metadata(model, metadata) if metadata else None
        if rep is not None:
            cold_pos.append(pos)
            queries.append(normalised(rep[None, :]))
    normed_all = index.normed(False)
    scored = np.concatenate([known, np.asarray(cold_pos, dtype=np.int64)])
    query = np.vstack([normed_all[rows[known]], *queries[1:]]) if len(scored) else None
    parts: list[tuple[np.ndarray, ...]] = []
    if query is not None:
        # targets-major product: one pass over the row-major target matrix per query
        scores = np.ascontiguousarray((cand.reprs @ query.T).T)
        # the target itself is never in its own list
        mask_columns(scores, cand, np.arange(len(known), dtype=np.int64), rows[known])
        top = top_candidates(scores, cand, k)
        positions = scored[top.rows]
        parts.append((positions, top.cols, top.ranks, top.scores, top.rows >= len(known)))
    popular_pos = np.setdiff1d(np.arange(len(ids)), scored)
    if len(popular_pos):
        cols, _ = cand.popular(model, k + 1)
        for pos in popular_pos.tolist():
            keep = cols[cols != rows[pos]][:k] if rows[pos] >= 0 else cols[:k]
            m = len(keep)
            parts.append((np.full(m, pos, dtype=np.int64), keep,
                          np.arange(1, m + 1, dtype=np.int64),
                          np.asarray(model.artifact.target_popularity,
                                     dtype=np.float32)[keep],
                          np.ones(m, dtype=bool)))
    id_array = np.asarray(ids, dtype=str)
    if not parts:
        text = np.zeros(0, dtype="<U1")
        ints = np.zeros(0, dtype=np.int64)
        return RecBlock(text, text, ints, np.zeros(0, np.float32), np.zeros(0, dtype=bool))
    positions, cols_, ranks, values, fallback = (np.concatenate(p) for p in zip(*parts,
                                                                              strict=True))
    order = np.lexsort((ranks, positions))
    return RecBlock(id_array[positions[order]], np.asarray(index.ids[cols_[order]]),
                    ranks[order], values[order].astype(np.float32), fallback[order])
