"""Availability under abuse: does a normal request stay fast while slow and greedy peers pile on?

Starts the stack as ``make run`` does (``python -m shared.stack.launcher``, in
a temporary data directory on free loopback ports), or uses a running one
(``--url`` and ``--api-key``). It uploads a synthetic shop, trains a model
for the bulk readers, measures ``GET /v1/recommender/models`` alone, then
again while these run at once, for ``--seconds``:

- 64 loops calling ``/readyz`` back to back (no key, like a probe gone wild);
- 10 slow uploaders: a multipart upload declaring 2 MB, sent at 1 KB/s;
- 16 slow bulk readers: ``GET /recommended_items`` for every source (a
  streamed answer of megabytes), read at 1 KB/s through a 4 KB receive buffer.

Prints the latency of the normal request (median, p95, max), how the slow
peers were cut off (status and seconds), and the /readyz rate. Loopback only;
every thread and process it starts ends with it. Usage::

    .venv/bin/python bench/abuse.py [--seconds 60] [--web-threads N]
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
P = "/v1/recommender"
READYZ_LOOPS, SLOW_UPLOADERS, SLOW_READERS = 64, 10, 16
#: Bytes a second each slow peer sends or reads.
SLOW_RATE = 1024
#: Target of the normal request, and the figure it must meet.
GOAL_MS = 250.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_stack(tmp: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str, str]:
    port, key = _free_port(), "rk_bench_" + secrets.token_urlsafe(16)
    env = {**os.environ, "RECSYS_DATA_DIR": str(tmp / "var"), "RECSYS_PORT": str(port),
           "RECSYS_FLOWER_PORT": str(_free_port()), "RECSYS_BOOTSTRAP_KEY": key}
    if args.web_threads:
        env["RECSYS_WEB_THREADS"] = str(args.web_threads)
    log = open(tmp / "stack.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "shared.stack.launcher"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the stack exited; see {tmp / 'stack.log'}")
        try:
            if requests.get(base + "/readyz", timeout=5).status_code == 200:
                return proc, base, key
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit("the stack did not become ready in 120 s")


def _prepare(base: str, key: str) -> None:
    """A shop of 5,000 users and 500 items, and model ``abuse`` trained on it."""
    rng = np.random.default_rng(7)
    users, items = rng.integers(0, 5000, 60_000), rng.integers(0, 500, 60_000)
    lines = ["type,source_id,target_id,timestamp,metadata"]
    lines += [f"view,u{u},i{i},2026-01-01T00:00:00Z," for u, i in zip(users, items, strict=True)]
    headers = {"apikey": key}
    files = {"files": ("events.csv", "\n".join(lines).encode(), "text/csv")}
    response = requests.post(base + P + "/data_batch", headers=headers, files=files,
                             data={"tags": "abuse"}, timeout=120)
    assert response.status_code == 201, response.text
    body = {"model_id": "abuse", "data_tags": ["abuse"], "evaluation": {"holdout": 0},
            "hyperparameters": {"epochs": 2, "no_components": 16}}
    response = requests.post(base + P + "/train", json=body, headers=headers, timeout=30)
    assert response.status_code in (202, 409), response.text
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = requests.get(base + P + "/status/abuse", headers=headers, timeout=30).json()
        if status["status"] != "running":
            assert status["status"] == "completed", status
            return
        time.sleep(1)
    raise SystemExit("training the bench model took over 300 s")


def _timed_models(base: str, key: str, stop: threading.Event, out: list[float],
                  errors: Counter[str]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        try:
            response = requests.get(base + P + "/models", headers={"apikey": key}, timeout=60)
            if response.status_code != 200:
                errors[f"models {response.status_code}"] += 1
        except requests.RequestException as exc:
            errors[f"models {type(exc).__name__}"] += 1
        out.append((time.perf_counter() - started) * 1000)
        stop.wait(0.2)


def _readyz_loop(base: str, stop: threading.Event, counts: Counter[str]) -> None:
    with requests.Session() as http:
        while not stop.is_set():
            try:
                counts[str(http.get(base + "/readyz", timeout=60).status_code)] += 1
            except requests.RequestException as exc:
                counts[type(exc).__name__] += 1


def _connect(base: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(120)
    sock.connect((host, int(port)))
    return sock


def _status_of(sock: socket.socket) -> str:
    try:
        sock.settimeout(10)
        head = sock.recv(4096)
    except OSError as exc:
        return type(exc).__name__
    if not head:
        return "closed"
    return head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "garbage"


def _slow_upload(base: str, key: str, stop: threading.Event, cuts: list[tuple[str, float]]
                 ) -> None:
    boundary = "benchabuse"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"slow.csv\"\r\nContent-Type: text/csv\r\n\r\n"
            "type,source_id,target_id,timestamp,metadata\n").encode()
    declared = 2_000_000
    line = b"view,u1,i1,2026-01-01T00:00:00Z,\n"
    while not stop.is_set():
        sock = _connect(base)
        started = time.monotonic()
        sock.sendall((f"POST {P}/data_batch HTTP/1.1\r\nHost: bench\r\napikey: {key}\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                      f"Content-Length: {declared}\r\n\r\n").encode() + head)
        outcome = "stopped"
        try:
            while not stop.is_set():
                sock.sendall(line * (SLOW_RATE // len(line)))
                readable = _wait_readable(sock, 1.0, stop)
                if readable:
                    outcome = _status_of(sock)
                    break
        except OSError as exc:
            outcome = type(exc).__name__
        finally:
            sock.close()
        if outcome != "stopped":
            cuts.append((outcome, time.monotonic() - started))


def _wait_readable(sock: socket.socket, seconds: float, stop: threading.Event) -> bool:
    import select

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            return True
    return False


def _drain(sock: socket.socket) -> str:
    """Read the rest at full speed: was the answer cut by the server, complete, or still going?"""
    tail, deadline = b"", time.monotonic() + 20
    sock.settimeout(5)
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return "complete" if tail.endswith(b"0\r\n\r\n") else "cut (incomplete)"
            tail = (tail + chunk)[-16:]
    except TimeoutError:
        return "not cut (server still streaming)"
    except OSError as exc:
        return f"cut ({type(exc).__name__})"
    return "not cut (server still streaming)"


def _slow_reader(base: str, key: str, stop: threading.Event, cuts: list[tuple[str, float]],
                 hold: float) -> None:
    """Read a bulk answer at 1 KB/s for ``hold`` seconds, then see whether the server cut it.

    The server's cut only shows once the kernel buffers between the two ends are
    drained, so the reader drains them at full speed after ``hold`` seconds.
    """
    while not stop.is_set():
        sock = _connect(base, rcvbuf=4096)
        started = time.monotonic()
        sock.sendall((f"GET {P}/recommended_items?model_id=abuse&max_recommendations=100"
                      f"&output_format=csv HTTP/1.1\r\nHost: bench\r\napikey: {key}\r\n\r\n"
                      ).encode())
        outcome = "stopped"
        try:
            while not stop.is_set() and time.monotonic() - started < hold:
                if _wait_readable(sock, 1.0, stop):
                    if not sock.recv(SLOW_RATE):
                        outcome = "closed by server"
                        break
                    stop.wait(1.0)
            else:
                if not stop.is_set():
                    outcome = _drain(sock)
        except OSError as exc:
            outcome = type(exc).__name__
        finally:
            sock.close()
        if outcome != "stopped":
            cuts.append((outcome, time.monotonic() - started))


def _summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name}: no samples"
    q = statistics.quantiles(values, n=20) if len(values) > 1 else values * 19
    return (f"{name}: median {statistics.median(values):7.1f} ms, p95 {q[18]:7.1f} ms, "
            f"max {max(values):7.1f} ms ({len(values)} requests)")


def _abuse(base: str, key: str, seconds: float, hold: float) -> dict[str, Any]:
    stop = threading.Event()
    readyz: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    uploads: list[tuple[str, float]] = []
    reads: list[tuple[str, float]] = []
    latencies: list[float] = []
    threads = [threading.Thread(target=_readyz_loop, args=(base, stop, readyz), daemon=True)
               for _ in range(READYZ_LOOPS)]
    threads += [threading.Thread(target=_slow_upload, args=(base, key, stop, uploads),
                                 daemon=True) for _ in range(SLOW_UPLOADERS)]
    threads += [threading.Thread(target=_slow_reader, args=(base, key, stop, reads, hold),
                                 daemon=True) for _ in range(SLOW_READERS)]
    for thread in threads:
        thread.start()
    time.sleep(3)  # let every slow peer get its connection in
    probe = threading.Thread(target=_timed_models, args=(base, key, stop, latencies, errors))
    probe.start()
    stop.wait(seconds)
    stop.set()
    probe.join()
    for thread in threads:
        thread.join(timeout=70)
    return {"latencies": latencies, "readyz": readyz, "errors": errors, "uploads": uploads,
            "reads": reads}


def _cuts(name: str, cuts: list[tuple[str, float]]) -> str:
    if not cuts:
        return f"{name}: no connection ended"
    by = Counter(outcome for outcome, _ in cuts)
    return (f"{name}: {len(cuts)} connections ended ({dict(by)}), after a median "
            f"{statistics.median(s for _, s in cuts):.1f} s")


def main() -> None:
    """Run the bench and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--url", help="a running stack (default: start one)")
    parser.add_argument("--api-key")
    parser.add_argument("--reader-hold", type=float, default=50.0,
                        help="seconds a slow reader reads before checking for a cut (well "
                             "over RECSYS_STREAM_WRITE_TIMEOUT)")
    parser.add_argument("--web-threads", type=int, help="RECSYS_WEB_THREADS of the stack")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        proc = None
        if args.url:
            base, key = args.url.rstrip("/"), args.api_key
        else:
            proc, base, key = _start_stack(Path(tmp_dir), args)
        try:
            _prepare(base, key)
            quiet: list[float] = []
            _timed_models_n(base, key, quiet, 20)
            result = _abuse(base, key, args.seconds, args.reader_hold)
        finally:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    out = io.StringIO()
    print(_summary("GET /models alone        ", quiet), file=out)
    print(_summary("GET /models under abuse  ", result["latencies"]), file=out)
    readyz = result["readyz"]
    print(f"/readyz: {sum(readyz.values()) / args.seconds:.0f} calls/s "
          f"({dict(readyz)})", file=out)
    print(_cuts("slow uploaders", result["uploads"]), file=out)
    print(_cuts("slow bulk readers", result["reads"]), file=out)
    if result["errors"]:
        print(f"errors of the normal request: {dict(result['errors'])}", file=out)
    median = statistics.median(result["latencies"]) if result["latencies"] else float("inf")
    verdict = "meets" if median < GOAL_MS else "MISSES"
    print(f"median under abuse {median:.1f} ms {verdict} the goal of {GOAL_MS:.0f} ms", file=out)
    print(out.getvalue(), end="")


def _timed_models_n(base: str, key: str, out: list[float], n: int) -> None:
    for _ in range(n):
        started = time.perf_counter()
        requests.get(base + P + "/models", headers={"apikey": key}, timeout=60)
        out.append((time.perf_counter() - started) * 1000)


if __name__ == "__main__":
    main()
