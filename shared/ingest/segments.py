"""Cutting a CSV byte stream into pieces at line ends, and working on them in parallel.

pyarrow's streaming CSV reader (``open_csv``) parses one block after another
on one core; its parallel reader (``read_csv``) needs the whole file and
returns the whole table. To convert a large upload on several cores in
bounded memory, :func:`map_segments` reads the stream in pieces of about
:data:`SEGMENT_BYTES`, cut after the last line end of each, and hands every
piece to a pool of threads (pyarrow releases the GIL while it parses), giving
the results back in order.

A line end may lie inside a quoted value, so a cut is only a guess at a record
boundary. Whoever parses a piece must check it: parsed alone, a piece cut
inside a quoted value ends in that value, unterminated, so its last row either
has too few fields (pyarrow refuses it) or a last field ending in the line end
(:func:`ends_inside_value`). A caller that finds such a piece reads the file
again another way. pyarrow has no public chunker to find exact boundaries
(its own is internal to the reader), and finding them by counting quotes would
mean a pass over every byte in Python, slower than the parse it saves.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, TypeVar

from shared.ingest.buffers import BufferPool, fill

T = TypeVar("T")

#: Bytes read and parsed together by one thread (the cut falls at the line end before it).
SEGMENT_BYTES = 8 << 20
#: Longest piece tried when no line end is found; beyond it :class:`NoLineEnd` is raised.
MAX_SEGMENT_BYTES = 64 << 20
#: Threads parsing pieces at the same time.
THREADS = 2
#: Buffers of pieces, kept for reuse: one upload's worth (32 MiB), held by the process.
_BUFFERS = BufferPool(SEGMENT_BYTES, keep=THREADS + 2)


class NoLineEnd(Exception):
    """No ``\\n`` within :data:`MAX_SEGMENT_BYTES` (one huge record, or ``\\r`` line ends)."""


def segments(stream: IO[bytes], pool: BufferPool | None = None,
             max_size: int = MAX_SEGMENT_BYTES) -> Iterator[tuple[bytearray, memoryview]]:
    """Pieces of ``stream``, each ending just after a ``\\n`` (the last one: at the end).

    Yields each piece with the buffer under it, taken from ``pool``: the caller gives
    the buffer back once nothing uses the piece any more.
    """
    pool = pool or _BUFFERS
    rest = b""
    while True:
        buf = pool.take()
        while True:
            buf[: len(rest)] = rest
            filled = len(rest) + fill(stream, memoryview(buf)[len(rest):])
            if filled < len(buf):  # the end of the stream
                if filled:
                    yield buf, memoryview(buf)[:filled]
                else:
                    pool.give(buf)
                return
            cut = buf.rfind(b"\n")
            if cut >= 0:
                break
            if len(buf) >= max_size:
                raise NoLineEnd(f"no line end within {max_size} bytes")
            rest, buf = bytes(buf), bytearray(2 * len(buf))  # one huge record: grow
        rest = bytes(memoryview(buf)[cut + 1:])
        yield buf, memoryview(buf)[: cut + 1]


def map_segments(stream: IO[bytes], work: Callable[[memoryview], T], threads: int = THREADS,
                 size: int | None = None) -> Generator[T, None, None]:
    """``work`` applied to each piece of ``stream`` in a pool of threads, results in order.

    At most ``threads + 1`` pieces are read ahead of the one being yielded, so memory is
    bounded by a few pieces whatever the stream's length; their buffers are reused once
    the caller comes back for the next result. Stopping early (closing the generator, or
    an exception from ``work``) cancels the pieces not yet started. ``size`` (bytes per
    piece) defaults to :data:`SEGMENT_BYTES`.
    """
    size = size or SEGMENT_BYTES
    buffers = _BUFFERS if size == _BUFFERS.size else BufferPool(size, keep=0)
    pending: deque[tuple[Future[T], bytearray]] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="csv-piece") as pool:
        try:
            for buf, piece in segments(stream, buffers):
                pending.append((pool.submit(work, piece), buf))
                del piece
                while len(pending) > threads or (pending and pending[0][0].done()):
                    future, done = pending.popleft()
                    yield future.result()
                    buffers.give(done)
            while pending:
                future, done = pending.popleft()
                yield future.result()
                buffers.give(done)
        finally:
            for future, _ in pending:
                future.cancel()


def ends_inside_value(last_cell: str | None) -> bool:
    """True when a piece's last parsed cell may be a quoted value cut at its line end.

    Cut inside a quoted value, the value runs to the end of the piece, which is a line
    end; a cell that legitimately ends in a line end gives a false alarm, which is safe.
    """
    return last_cell is not None and last_cell.endswith(("\n", "\r"))
