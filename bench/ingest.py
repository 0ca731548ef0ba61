"""Benchmark: upload a 1,000,000-row interactions CSV through the running API.

Starts a private embedded Redis-compatible server and the API under gunicorn
(as the Procfile runs it, one gthread worker) in a temporary directory,
uploads the file with ``curl`` (multipart, streamed from disk), and prints:
rows per second end to end, wall time, the API worker's resident memory before
and at its peak (``VmHWM``), and, in the same run, the time
``pyarrow.csv.read_csv`` alone takes on the same file and the ratio. The
machine is shared, so the upload runs ``--repeat`` times, each right after a
pyarrow read, and medians are compared; memory is the peak over all uploads.

Targets (2 cores): >= 250,000 rows/s, ratio <= 3, memory growth < 300 MB.

    .venv/bin/python bench/ingest.py [--rows 1000000] [--keep DIR] [--kind entities]

``--kind entities`` uploads a product catalogue instead, whose metadata differs on
every row (each distinct metadata object is parsed once, in Python, with orjson).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pv
import redis
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.keys import SCOPES, create_key  # noqa: E402
from shared.stack.embedded import start_embedded  # noqa: E402

TARGET_ROWS_PER_S = 250_000
TARGET_RATIO = 3.0
TARGET_GROWTH_MB = 300


def generate(path: Path, rows: int, seed: int = 7) -> None:
    """A realistic interactions file: skewed ids, a few types, ISO timestamps, small JSON."""
    rng = np.random.default_rng(seed)
    users = rng.zipf(1.3, rows) % 200_000
    items = rng.zipf(1.2, rows) % 50_000
    types = np.array(["view", "click", "add_to_cart", "purchase"])[
        rng.choice(4, rows, p=[0.7, 0.2, 0.07, 0.03])]
    seconds = 1_700_000_000 + rng.integers(0, 180 * 86_400, rows)
    stamps = np.datetime_as_string(seconds.astype("datetime64[s]")).astype(object) + "Z"
    metadata = np.array([
        '{"device": "ios"}', '{"device": "android"}', '{"device": "web", "ref": "email"}',
        '{"device": "web", "ref": "search", "position": 3}', "",
    ])[rng.integers(0, 5, rows)]
    table = pa.table({
        "type": types,
        "source_id": np.char.add("user_", users.astype(str)),
        "target_id": np.char.add("sku-", items.astype(str)),
        "timestamp": stamps.astype(str),
        "metadata": metadata,
    })
    pv.write_csv(table, path, write_options=pv.WriteOptions(quoting_style="needed"))


def generate_entities(path: Path, rows: int, seed: int = 7) -> None:
    """A catalogue: one item per row, metadata unique per row (price, category, sku)."""
    rng = np.random.default_rng(seed)
    cents = rng.integers(100, 100_000, rows)
    categories = np.array(["shoes", "bags", "hats", "coats"])[rng.integers(0, 4, rows)]
    numbers = np.arange(rows).astype(str)
    metadata = [f'{{"price": {c / 100}, "category": "{k}", "sku": "S{n}"}}'
                for c, k, n in zip(cents.tolist(), categories.tolist(), numbers.tolist(),
                                   strict=True)]
    table = pa.table({
        "id": np.char.add("item-", numbers),
        "type": np.full(rows, "item"),
        "name": np.char.add("Product ", numbers),
        "metadata": metadata,
        "media_url": np.char.add(np.char.add("https://cdn.example.com/", numbers), ".jpg"),
    })
    pv.write_csv(table, path, write_options=pv.WriteOptions(quoting_style="needed"))


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process from /proc, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def own_cpu_seconds() -> float:
    """User plus system CPU time of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker_pid(master: int) -> int:
    """The single gunicorn worker of ``master``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise RuntimeError("gunicorn started no worker")


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--kind", choices=("interactions", "entities"), default="interactions")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    parser.add_argument("--repeat", type=int, default=3,
                        help="uploads (each next to a pyarrow read); medians are reported")
    args = parser.parse_args()

    base = args.keep or Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    csv_path = base / f"{args.kind}.csv"
    t0 = time.perf_counter()
    (generate if args.kind == "interactions" else generate_entities)(csv_path, args.rows)
    size = csv_path.stat().st_size
    print(f"generated {args.rows:,} rows, {size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s")

    server = start_embedded(base / "redis")
    api: subprocess.Popen[bytes] | None = None
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        key, _ = create_key(r, "bench", list(SCOPES))
        port = free_port()
        env = {**os.environ, "RECSYS_REDIS_URL": server.url, "RECSYS_DATA_DIR": str(base / "var"),
               "RECSYS_LOG_LEVEL": "INFO", "RECSYS_LOG_FORMAT": "text", "PYTHONPATH": str(ROOT)}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        api_log = base / "api.log"
        with open(api_log, "wb") as log_out:
            api = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_conf",
                 "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread", "--workers", "1",
                 "--threads", "4", "--timeout", "3600", "--no-control-socket",
                 "--access-logfile", "-", "api.app:create_app()"],
                cwd=ROOT, env=env, start_new_session=True, stdout=log_out, stderr=log_out,
            )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or api.poll() is not None:
                raise RuntimeError("the API did not start")
            time.sleep(0.2)
        pid = worker_pid(api.pid)
        # warm up (imports, first request) with a tiny upload, then measure
        requests.post(url + "/v1/recommender/data_batch", headers={"apikey": key},
                      json={"interactions": [{"source_id": "u", "target_id": "i"}]}, timeout=30)
        rss_before = rss_kib(pid)
        walls: list[float] = []
        alones: list[float] = []
        api_cpus: list[float] = []
        alone_cpus: list[float] = []
        for attempt in range(args.repeat):
            # pyarrow alone right before each upload, so both see the same machine load
            t0, c0 = time.perf_counter(), own_cpu_seconds()
            pv.read_csv(csv_path)
            alones.append(time.perf_counter() - t0)
            alone_cpus.append(own_cpu_seconds() - c0)
            c0 = cpu_seconds(pid)
            start = time.perf_counter()
            out = subprocess.run(
                ["curl", "-sS", "-H", f"apikey: {key}", "-F", f"files=@{csv_path};type=text/csv",
                 "-F", f"tags=bench-{attempt}", url + "/v1/recommender/data_batch"],
                capture_output=True, check=True, text=True,
            ).stdout
            walls.append(time.perf_counter() - start)
            api_cpus.append(cpu_seconds(pid) - c0)
            body = json.loads(out)
            if not isinstance(body, list):
                raise RuntimeError(f"upload failed: {body}")
            stored = body[0]["interaction_count"] or body[0]["entity_count"]
            print(f"  upload {attempt + 1}: {walls[-1]:.2f} s ({api_cpus[-1]:.2f} CPU s in the "
                  f"API); pyarrow alone {alones[-1]:.2f} s ({alone_cpus[-1]:.2f} CPU s)")
        peak = rss_kib(pid, "VmHWM")
    finally:
        if api is not None and api.poll() is None:
            os.killpg(api.pid, signal.SIGTERM)
            api.wait(timeout=30)
        server.stop()

    wall = statistics.median(walls)
    alone = statistics.median(alones)
    rate = stored / wall
    ratio = wall / alone
    growth_mb = (peak - rss_before) / 1024

    phases = [line for line in api_log.read_text().splitlines() if "received" in line]
    if phases:
        print("API phases (last):", phases[-1][phases[-1].index("upload of"):].split('"')[0])
    print(f"rows stored per upload: {stored:,}")
    print(f"end-to-end wall time:   {wall:.2f} s (median of {len(walls)})")
    print(f"end-to-end rows/s:      {rate:,.0f}   (target >= {TARGET_ROWS_PER_S:,})")
    print(f"pyarrow read_csv alone: {alone:.2f} s (median of {len(alones)})")
    print(f"ratio to pyarrow alone: {ratio:.2f}   (target <= {TARGET_RATIO}; medians, warm)")
    print(f"ratio, first runs only: {walls[0] / alones[0]:.2f}   (first upload to a fresh API "
          "process / first read in this process)")
    print(f"CPU seconds, API/alone: {statistics.median(api_cpus):.2f} / "
          f"{statistics.median(alone_cpus):.2f}  (less sensitive to the machine's load)")
    print(f"API RSS before upload:  {rss_before / 1024:.0f} MB")
    print(f"API RSS peak:           {peak / 1024:.0f} MB")
    print(f"API memory growth:      {growth_mb:.0f} MB   (target < {TARGET_GROWTH_MB})")
    ok = rate >= TARGET_ROWS_PER_S and ratio <= TARGET_RATIO and growth_mb < TARGET_GROWTH_MB
    print("targets:", "met" if ok else "NOT met")
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
