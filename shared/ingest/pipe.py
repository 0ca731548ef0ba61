"""Converting a CSV file while it is still being uploaded.

The request thread writes each received chunk to the file on disk (the copy
that is kept for exact error lines and for the rare second read) and also
hands it to a :class:`StreamingConversion`, whose thread feeds the same bytes
to pyarrow's CSV reader through a bounded in-memory pipe. Receiving, parsing,
converting and writing Parquet so overlap instead of running one after the
other; the pipe holds at most :data:`PIPE_CHUNKS` chunks, so a slow converter
slows the upload down rather than filling memory.

The standard library has no blocking byte pipe between threads that pyarrow
can read like a file (``os.pipe`` would copy every byte through the kernel
twice), hence the small :class:`ChunkPipe` here. It copies what it is fed into
blocks it reuses (:mod:`shared.ingest.buffers`), so the caller may reuse its own
buffer at once.
"""

from __future__ import annotations

import contextlib
import io
import queue
import threading
from pathlib import Path

from shared.config import Settings
from shared.errors import DependencyUnavailable, ServiceError
from shared.ingest.buffers import BufferPool
from shared.ingest.csv_reader import BLOCK_SIZE, Failed, convert_stream
from shared.ingest.store import Prepared

#: Blocks the pipe holds before the writer waits.
PIPE_CHUNKS = 16
#: Bytes per block of the pipe.
PIPE_BLOCK = 1 << 20
#: Blocks of every pipe, kept for reuse: one upload's worth (18 MiB), held by the process.
_BLOCKS = BufferPool(PIPE_BLOCK, keep=PIPE_CHUNKS + 2)
#: Seconds between checks, while waiting on a full or empty pipe, that the other side is alive.
POLL = 0.05


class ChunkPipe(io.RawIOBase):
    """A one-writer, one-reader byte pipe between threads, readable like a file."""

    def __init__(self, max_chunks: int = PIPE_CHUNKS) -> None:
        super().__init__()
        self._queue: queue.Queue[memoryview | None] = queue.Queue(max_chunks)
        self._blocks = _BLOCKS
        self._buffer = memoryview(b"")
        self._eof = False
        self._ended = False
        self.reader_gone = threading.Event()

    def readable(self) -> bool:
        """The reading end is a file."""
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        """Copy the next available bytes; blocks until some arrive; 0 at the end."""
        while not len(self._buffer):
            if self._buffer.obj is not None:  # a block read to its end: reuse it
                block = self._buffer.obj
                self._buffer.release()
                self._blocks.give(block)  # type: ignore[arg-type]
            self._buffer = memoryview(b"")
            if self._eof:
                return 0
            chunk = self._queue.get()
            if chunk is None:
                self._eof = True
                return 0
            self._buffer = chunk
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def _put(self, item: memoryview | None) -> None:
        while not self.reader_gone.is_set():
            try:
                self._queue.put(item, timeout=POLL)
                return
            except queue.Full:
                continue

    def feed(self, data: bytes | memoryview) -> None:
        """Hand over a copy of ``data`` (waits while the pipe is full; dropped once the
        reader is gone)."""
        view = memoryview(data)
        while not self._ended and len(view):
            block = self._blocks.take()
            n = min(len(block), len(view))
            block[:n] = view[:n]
            self._put(memoryview(block)[:n])
            view = view[n:]

    def end(self) -> None:
        """No more data: the reader sees the end of the file."""
        if not self._ended:
            self._ended = True
            self._put(None)

    def abort(self) -> None:
        """Throw away what is queued and end the stream now."""
        self._ended = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        with contextlib.suppress(queue.Full):  # just emptied, and only this thread writes
            self._queue.put_nowait(None)


class StreamingConversion:
    """One CSV file converted in its own thread as its bytes arrive."""

    def __init__(self, source: str, out: Path, settings: Settings) -> None:
        self.source = source
        self.out = out
        self.pipe = ChunkPipe()
        self.result: Prepared | Failed | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(settings,), name=f"csv-{out.stem}", daemon=True
        )
        self._thread.start()

    def _run(self, settings: Settings) -> None:
        reader = io.BufferedReader(self.pipe, buffer_size=BLOCK_SIZE)
        try:
            self.result = convert_stream(reader, self.source, self.out, settings)
        except BaseException as exc:  # handed to the request thread by feed() or wait()
            self.error = exc
        finally:
            self.pipe.reader_gone.set()

    def feed(self, data: bytes | memoryview) -> None:
        """Pass a received chunk on; raises the conversion's refusal (bad header, row limit)."""
        if isinstance(self.error, ServiceError):
            raise self.error
        self.pipe.feed(data)

    def end(self) -> None:
        """The file is complete."""
        self.pipe.end()

    def join(self) -> None:
        """Wait until the conversion has finished (its file must be complete)."""
        self._thread.join()

    def abort(self) -> None:
        """The request failed: stop converting and wait for the thread."""
        self.pipe.abort()
        self._thread.join()

    def wait(self) -> Prepared | Failed:
        """The conversion's outcome once the whole file has arrived."""
        self.pipe.end()
        self._thread.join()
        if isinstance(self.error, OSError):
            raise DependencyUnavailable(
                f"Converting {self.source!r} failed writing to disk: {self.error}; "
                "nothing was stored.",
                details={"dependency": "disk"},
            ) from self.error
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result
