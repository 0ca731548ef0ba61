"""Recommendation blocks: sources scored block by block, known, cold-started and popular.

:func:`recommend_ids` and :func:`recommend_all` return iterators of
:class:`RecBlock`; each block is one matrix product over the target
representations (:mod:`shared.models.scoring`), so a request for every source of a
large model never holds more than a few blocks of scores and rows at a time.
Given an executor, a bulk request scores its blocks on its threads (numpy
releases the GIL in the product and the selection, so blocks run on several
cores at once while the API process keeps BLAS itself single-threaded) and
still yields them in order.

Sources the model never saw: scored from their metadata features when the
model learned source metadata features (the caller supplies the metadata,
from the request or the newest uploaded entity record), else given the most
popular targets scored by their share of interactions. Their rows carry
``fallback = True``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import NamedTuple, TypeVar

import numpy as np

from shared.models import scoring
from shared.models.serving import LoadedModel, MetadataLookup


class RecBlock(NamedTuple):
    """Flat recommendation rows, ordered by source (request order), then rank."""

    source_ids: np.ndarray
    target_ids: np.ndarray
    ranks: np.ndarray
    scores: np.ndarray
    fallback: np.ndarray


def _empty_block() -> RecBlock:
    ints = np.zeros(0, dtype=np.int64)
    text = np.zeros(0, dtype="<U1")
    return RecBlock(text, text, ints, np.zeros(0, np.float32), np.zeros(0, dtype=bool))


def _score_rows(
    model: LoadedModel,
    reprs: np.ndarray,
    seen_rows: np.ndarray,
    k: int,
    exclude_seen: bool,
    buffer: np.ndarray,
) -> scoring.TopK:
    """Top-k of ``reprs`` (b, k+2); ``seen_rows`` are artifact rows (-1: no history)."""
    art = model.artifact
    scores = scoring.score_block(reprs, art.target_repr, out=buffer)
    if exclude_seen:
        scoring.mask_seen(scores, seen_rows, art.seen_indptr, art.seen_indices)
    return scoring.top_k(scores, k)


def recommend_all(
    model: LoadedModel, k: int, exclude_seen: bool, executor: Executor | None = None
) -> Iterator[RecBlock]:
    """Every source of the model, in artifact order, one block at a time."""
    art = model.artifact
    step = scoring.block_rows(model.n_targets)
    buffers = _Buffers(min(step, model.n_sources) * max(1, model.n_targets))

    def task(start: int) -> RecBlock:
        rows = np.arange(start, min(start + step, model.n_sources), dtype=np.int64)
        with buffers.take() as buffer:
            top = _score_rows(
                model, np.asarray(art.source_repr[rows]), rows, k, exclude_seen, buffer
            )
        return RecBlock(
            np.asarray(art.source_ids[rows[top.rows]]),
            np.asarray(art.target_ids[top.cols]),
            top.ranks,
            top.scores,
            np.zeros(len(top.rows), dtype=bool),
        )

    return _in_order(task, range(0, model.n_sources, step), executor)


def recommend_ids(
    model: LoadedModel,
    source_ids: Sequence[str],
    k: int,
    exclude_seen: bool,
    lookup: MetadataLookup | None = None,
    executor: Executor | None = None,
) -> Iterator[RecBlock]:
    """The given sources, in the given order, one block at a time.

    Unseen sources: scored from ``lookup(source_id)`` metadata when the model
    learned metadata features (one lookup per unseen source), else popularity.
    """
    if not source_ids:
        return iter(())
    step = scoring.block_rows(model.n_targets)
    buffers = _Buffers(min(step, len(source_ids)) * max(1, model.n_targets))

    def task(start: int) -> RecBlock:
        # Fixed-width numpy strings per block only: memory follows the block's longest id.
        ids = np.asarray(source_ids[start : start + step], dtype=str)
        with buffers.take() as buffer:
            return _block(model, ids, model.rows_of(ids), k, exclude_seen, lookup, buffer)

    return _in_order(task, range(0, len(source_ids), step), executor)


class _Buffers:
    """Score buffers of one request, one per block being scored at the same time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    @contextmanager
    def take(self) -> Iterator[np.ndarray]:
        """A float32 buffer of ``size`` for the duration of one block."""
        with self._lock:
            buffer = self._free.pop() if self._free else None
        if buffer is None:
            buffer = np.empty(self.size, dtype=np.float32)
        try:
            yield buffer
        finally:
            with self._lock:
                self._free.append(buffer)


B = TypeVar("B")


def _in_order(
    task: Callable[[int], B], starts: range, executor: Executor | None
) -> Iterator[B]:
    """Run ``task`` per block start, results in order; with an executor, a few blocks at once.

    Keeps at most the executor's worker count of blocks running ahead of the consumer, so a
    streamed answer holds a bounded number of score buffers; an abandoned stream cancels the
    blocks not yet started.
    """
    if executor is None or len(starts) <= 1:
        return (task(start) for start in starts)
    ahead = max(1, getattr(executor, "_max_workers", 2))

    def run() -> Iterator[B]:
        pending: deque[Future[B]] = deque()
        try:
            for start in starts:
                pending.append(executor.submit(task, start))
                if len(pending) > ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

    return run()


def _block(
    model: LoadedModel,
    ids: np.ndarray,
    rows: np.ndarray,
    k: int,
    exclude_seen: bool,
    lookup: MetadataLookup | None,
    buffer: np.ndarray,
) -> RecBlock:
    """One block of requested sources: known, cold-started and popularity rows merged."""
    art = model.artifact
    known = np.flatnonzero(rows >= 0)
    cold_pos: list[int] = []
    cold_reprs: list[np.ndarray] = []
    unseen = np.flatnonzero(rows < 0)
    if len(unseen) and lookup is not None and model.has_metadata_features:
        # One metadata lookup per unseen source: unavoidable, each is its own entity record.
        for pos in unseen.tolist():
            metadata = lookup(str(ids[pos]))
            rep = model.cold_repr(metadata) if metadata else None
            if rep is not None:
                cold_pos.append(pos)
                cold_reprs.append(rep)
    scored_pos = np.concatenate([known, np.asarray(cold_pos, dtype=np.int64)])
    pop_pos = np.setdiff1d(unseen, scored_pos, assume_unique=True)

    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    if len(scored_pos):
        reprs = np.empty((len(scored_pos), art.source_repr.shape[1]), dtype=np.float32)
        reprs[: len(known)] = art.source_repr[rows[known]]
        if cold_reprs:
            reprs[len(known) :] = np.stack(cold_reprs)
        seen_rows = np.concatenate([rows[known], np.full(len(cold_pos), -1, dtype=np.int64)])
        top = _score_rows(model, reprs, seen_rows, k, exclude_seen, buffer)
        positions = scored_pos[top.rows]
        parts.append((positions, top.cols, top.ranks, top.scores, rows[positions] < 0))
    if len(pop_pos) and model.n_targets:
        cols, shares = scoring.popular(model.pop_order, art.target_popularity, k)
        n = len(cols)
        parts.append((
            np.repeat(pop_pos, n),
            np.tile(cols, len(pop_pos)),
            np.tile(np.arange(1, n + 1, dtype=np.int64), len(pop_pos)),
            np.tile(shares, len(pop_pos)),
            np.ones(n * len(pop_pos), dtype=bool),
        ))
    if not parts:
        return _empty_block()
    positions, cols, ranks, scores, fallback = (np.concatenate(p) for p in zip(*parts, strict=True))
    order = np.lexsort((ranks, positions))
    return RecBlock(
        ids[positions[order]],
        np.asarray(art.target_ids[cols[order]]),
        ranks[order],
        scores[order].astype(np.float32),
        fallback[order],
    )


def clean_scores(scores: np.ndarray) -> list[float]:
    """Scores as Python floats rounded to float32's 7 significant digits (short JSON/CSV text)."""
    x = np.asarray(scores, dtype=np.float64)
    out = x.copy()
    ok = np.isfinite(x) & (x != 0)
    if ok.any():
        v = x[ok]
        digits = 6 - np.floor(np.log10(np.abs(v))).astype(np.int64)
        scale = 10.0 ** np.abs(digits).astype(np.float64)
        out[ok] = np.where(digits >= 0, np.round(v * scale) / scale, np.round(v / scale) * scale)
    result: list[float] = out.tolist()
    return result
