"""Writing recommendation answers: one JSON document or CSV, whole when small, streamed when large.

``/recommended_items`` and ``/similar_items`` (plain or shaped) all answer through
:func:`stream_answer`: the first two blocks are computed before the status line, so
errors still get a proper status and small answers go out whole with a
Content-Length; larger ones stream block by block. The writers take rows already
built per block (:func:`block_rows` for the plain four fields plus ``fallback``).
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import orjson
from flask import Response, stream_with_context

from shared.models.blocks import RecBlock, clean_scores
from shared.models.serving import LoadedModel

log = logging.getLogger(__name__)


def stream_answer(model: LoadedModel, blocks: Iterator[Any],
                  writer: Callable[[Iterable[Any]], Iterator[bytes]],
                  output_format: str) -> Response:
    """Whole answer when small, else streamed (errors before the first byte get a status)."""
    head = list(itertools.islice(blocks, 2))
    streamed = len(head) == 2
    chunks = writer(itertools.chain(head, blocks))
    mimetype = "text/csv" if output_format == "csv" else "application/json"
    if streamed:
        response = Response(stream_with_context(_logged(chunks, model)), mimetype=mimetype)
        response.headers["X-Accel-Buffering"] = "no"
    else:
        response = Response(b"".join(chunks), mimetype=mimetype)
    response.headers["X-Model-Version"] = str(model.version)
    return response


def _logged(chunks: Iterable[bytes], model: LoadedModel) -> Iterator[bytes]:
    """Log a failure in the middle of a stream (the status line is already sent)."""
    try:
        yield from chunks
    except Exception:
        log.exception("streaming the answer of model %s failed", model.model_id)
        raise


def block_rows(block: RecBlock, first: str = "source_id",
               second: str = "target_id") -> list[dict[str, Any]]:
    """A block's rows as JSON objects: ``first``, ``second``, rank, score, fallback."""
    return [
        {first: s, second: t, "rank": r, "score": sc, "fallback": f}
        for s, t, r, sc, f in zip(block.source_ids.tolist(), block.target_ids.tolist(),
                                  block.ranks.tolist(), clean_scores(block.scores),
                                  block.fallback.tolist(), strict=True)
    ]


def json_document(model: LoadedModel, key: str, row_lists: Iterable[list[dict[str, Any]]],
                  unknown_ids: list[str] | None = None) -> Iterator[bytes]:
    """``{"model_id", "version", key: [rows...]}`` plus ``unknown_ids`` when given."""
    yield (b'{"model_id":' + orjson.dumps(model.model_id) + b',"version":'
           + str(model.version).encode() + b',"' + key.encode() + b'":[')
    sep = b""
    for rows in row_lists:
        if not rows:
            continue
        yield sep + orjson.dumps(rows)[1:-1]
        sep = b","
    tail = b"]"
    if unknown_ids is not None:
        tail += b',"unknown_ids":' + orjson.dumps(unknown_ids)
    yield tail + b"}"


def csv_document(header: Sequence[str],
                 row_lists: Iterable[Iterable[Sequence[Any]]]) -> Iterator[bytes]:
    """CSV: the header, then one chunk of lines per list of rows."""
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(header)
    yield buffer.getvalue().encode("utf-8")
    for rows in row_lists:
        buffer.seek(0)
        buffer.truncate()
        out.writerows(rows)
        if buffer.tell():
            yield buffer.getvalue().encode("utf-8")


def plain_csv_rows(block: RecBlock) -> Iterable[Sequence[Any]]:
    """A block's CSV lines: the contract's four columns."""
    return zip(block.source_ids.tolist(), block.target_ids.tolist(), block.ranks.tolist(),
               clean_scores(block.scores), strict=True)
