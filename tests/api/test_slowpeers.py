"""The pace rules of api.slowpeers on their own: bodies and streamed answers (issue #19)."""

from __future__ import annotations

import io
import socket
import threading
import time

import pytest

from api.slowpeers import BodyTimeout, Pace, PacedInput, PacedOutput


def test_a_body_below_the_minimum_rate_fails_after_the_grace() -> None:
    pace = Pace(timeout=0.2, min_rate=10_000)
    pace.add(100)  # within the grace: fine
    time.sleep(0.4)
    with pytest.raises(BodyTimeout) as caught:
        pace.add(100)
    assert caught.value.status == 408 and caught.value.details["received_bytes"] == 200


def test_a_fast_body_passes_and_reads_whole() -> None:
    data = b"x" * 3_000_000
    stream = PacedInput(io.BytesIO(data), Pace(timeout=0.01, min_rate=1000))
    assert stream.read() == data


def test_a_streamed_answer_to_a_slow_reader_is_cut_and_a_fast_one_is_whole() -> None:
    def run(read_pause: float) -> tuple[bool, int]:
        writer, reader = socket.socketpair()
        writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        chunks = (b"y" * 100_000 for _ in range(100))  # 10 MB
        out = PacedOutput(chunks, writer, timeout=0.5, min_rate=200_000)
        stop = threading.Event()
        got = [0]

        def read() -> None:
            reader.settimeout(5)
            while not stop.is_set():
                data = reader.recv(4096)
                if not data:
                    return
                got[0] += len(data)
                if read_pause:
                    time.sleep(read_pause)

        thread = threading.Thread(target=read)
        thread.start()
        try:
            for piece in out:
                writer.sendall(piece)
        except OSError:
            pass  # the cut shut the socket down
        writer.close()
        thread.join(10)  # the reader reads to the end of what was sent
        stop.set()
        reader.close()
        return out.cut, got[0]

    cut, got = run(read_pause=0.05)  # about 80 KB a second: below 200 KB/s
    assert cut and got < 10_000_000
    cut, got = run(read_pause=0.0)
    assert not cut and got == 10_000_000
