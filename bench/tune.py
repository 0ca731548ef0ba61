"""Tuning benchmark: a search's parallel efficiency, and what it gains over the defaults.

Starts a private stack (embedded Redis-compatible server, the API on a loopback
port, one real prefork Celery worker with ``--workers`` processes, each trial
fitting with ``--threads`` OpenMP threads; the defaults are ``make run``'s: 2 and
2), uploads synthetic rating-like data through ``POST /data_batch`` (users with
latent tastes rate ~``--per-user`` items each; each user's most recent
``--test-per-user`` ratings are kept back as held-out data and never uploaded),
then:

1. ``POST /train`` with the defaults; its served model's precision@10 on the
   held-out ratings (``GET /recommended_items``, seen items excluded);
2. ``POST /tune`` with ``--trials`` trials over the default space; the wall time
   from the first trial's start to the last one's end, against the trials' summed
   seconds (their ratio, and that ratio over the worker processes: the parallel
   efficiency), the time to ``completed`` including the final fit, and the served
   model's precision@10 on the same held-out ratings.

Targets (issue #15): summed trial time at least 1.3x the search's wall time on 2
cores, and the tuned model above the defaults on the held-out ratings.

    .venv/bin/python bench/tune.py [--trials 12] [--interactions 100000] [--workers 2]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._stack import Stack  # noqa: E402
from shared.runs.records import get_run  # noqa: E402

TENANT = "default"
K = 10


def ratings(n: int, per_user: int, n_items: int, seed: int) -> pa.Table:
    """About ``n`` ratings: users' tastes in 8 latent dimensions,
    item popularity on a power law; each user rates the items that suit them best among a
    popularity-weighted sample, at random times."""
    rng = np.random.default_rng(seed)
    n_users = max(1, n // per_user)
    users, items = rng.normal(size=(n_users, 8)), rng.normal(size=(n_items, 8))
    popularity = 1.0 / (np.arange(n_items) + 20.0)
    popularity /= popularity.sum()
    src, tgt, ts = [], [], []
    for u in range(n_users):  # bench-data generation: one vectorised draw per user
        pool = rng.choice(n_items, size=min(n_items, per_user * 4), replace=False, p=popularity)
        affinity = items[pool] @ users[u] + rng.normal(scale=1.0, size=pool.size)
        chosen = pool[np.argsort(-affinity)[:per_user]]
        src.extend([f"u{u}"] * chosen.size)
        tgt.extend(f"i{i}" for i in chosen)
        ts.extend(rng.integers(1_600_000_000, 1_700_000_000, chosen.size).tolist())
    table = pa.table({"type": pa.array(["rating"] * len(src)), "source_id": pa.array(src),
                      "target_id": pa.array(tgt), "timestamp": pa.array(ts, pa.int64()),
                      "metadata": pa.array(["{}"] * len(src))})
    return table


def split_latest(table: pa.Table, per_user: int) -> tuple[pa.Table, dict[str, set[str]]]:
    """(train rows, each user's ``per_user`` most recent targets held out)."""
    sources, targets = table["source_id"].to_pylist(), table["target_id"].to_pylist()
    stamps = table["timestamp"].to_pylist()
    order = sorted(range(table.num_rows), key=lambda i: (sources[i], -stamps[i]))
    kept: list[int] = []
    held: dict[str, set[str]] = {}
    count: dict[str, int] = {}
    for i in order:
        user = sources[i]
        if count.get(user, 0) < per_user:
            held.setdefault(user, set()).add(targets[i])
            count[user] = count.get(user, 0) + 1
        else:
            kept.append(i)
    return table.take(pa.array(sorted(kept))), held


def upload(stack: Stack, table: pa.Table, directory: Path) -> None:
    """Upload ``table`` as one CSV file through POST /data_batch."""
    path = directory / "ratings.csv"
    pacsv.write_csv(table, path)
    with open(path, "rb") as fh:
        response = requests.post(f"{stack.url}/data_batch", headers=stack.headers(),
                                 files={"files": ("ratings.csv", fh, "text/csv")}, timeout=3600)
    if response.status_code != 201:
        raise SystemExit(f"upload failed: {response.status_code} {response.text[:500]}")


def run(stack: Stack, path: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """(seconds from the POST to the end, final status); exits unless completed."""
    started = time.perf_counter()
    response = requests.post(f"{stack.url}{path}", headers=stack.headers(), json=body,
                             timeout=60)
    if response.status_code != 202:
        raise SystemExit(f"{path} failed: {response.status_code} {response.text[:500]}")
    while True:
        status = requests.get(f"{stack.url}/status/{body['model_id']}",
                              headers=stack.headers(), timeout=60).json()
        if status["status"] != "running":
            if status["status"] != "completed":
                raise SystemExit(f"{path} ended as {status['phase']}: {status['message']}")
            return time.perf_counter() - started, status
        time.sleep(0.25)


def held_out_precision(stack: Stack, model_id: str, held: dict[str, set[str]]) -> float:
    """Mean precision@K of the served model's recommendations on the held-out targets."""
    users, hits = sorted(held), 0
    for start in range(0, len(users), 200):
        chunk = users[start:start + 200]
        response = requests.get(f"{stack.url}/recommended_items", headers=stack.headers(),
                                params={"model_id": model_id, "source_id": chunk,
                                        "max_recommendations": K, "output_format": "csv"},
                                timeout=120)
        response.raise_for_status()
        for row in csv.DictReader(io.StringIO(response.text)):
            hits += row["target_id"] in held.get(row["source_id"], ())
    return hits / (K * len(users))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--interactions", type=int, default=100_000)
    parser.add_argument("--per-user", type=int, default=50)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--test-per-user", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads per fit")
    args = parser.parse_args()

    table = ratings(args.interactions, args.per_user, args.items, seed=7)
    train_rows, held = split_latest(table, args.test_per_user)
    print(f"data: {train_rows.num_rows} ratings uploaded, {len(held)} users, "
          f"{args.test_per_user} latest ratings each held out; {args.workers} worker "
          f"processes x {args.threads} threads on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        stack = Stack(Path(tmp), args.threads, args.workers)
        try:
            upload(stack, train_rows, Path(tmp))
            secs, _ = run(stack, "/train", {"model_id": "defaults"})
            base = held_out_precision(stack, "defaults", held)
            print(f"defaults: POST /train {secs:.1f} s; held-out precision@{K} {base:.4f}")
            secs, final = run(stack, "/tune", {"model_id": "tuned",
                                               "search": {"trials": args.trials}})
            report(stack, secs, final, base, held, args.workers)
        finally:
            stack.close()


def report(stack: Stack, secs: float, final: dict[str, Any], base: float,
           held: dict[str, set[str]], workers: int) -> None:
    """Print the search's timing and quality lines."""
    record = get_run(stack.redis, TENANT, "tuned")
    trials = (record or {}).get("tuning", {}).get("trials", [])
    spans = [(t["_started"], t["_ended"]) for t in trials if t.get("_ended")]
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    summed = sum(t["seconds"] or 0.0 for t in trials)
    best = final["tuning"]["best"]
    tuned = held_out_precision(stack, "tuned", held)
    states = [t["state"] for t in final["tuning"]["trials"]]
    print(f"search: {len(trials)} trials ({states.count('complete')} complete) on "
          f"{len({t['worker'] for t in trials})} worker node(s)")
    print(f"  trials' wall time {wall:.1f} s, summed trial time {summed:.1f} s: "
          f"{summed / wall:.2f}x (target >= 1.3x); parallel efficiency "
          f"{summed / wall / workers:.0%} of {workers} processes")
    print(f"  POST /tune to completed (with the final fit): {secs:.1f} s")
    print(f"  best: trial {best['trial']} {best['params']}, holdout precision@{K} "
          f"{best['value']:.4f}")
    print(f"tuned: held-out precision@{K} {tuned:.4f} vs defaults {base:.4f} "
          f"({(tuned - base) / base:+.1%})")


if __name__ == "__main__":
    main()
