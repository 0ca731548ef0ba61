"""Benchmark: finding an entity's newest uploaded record for cold start, over many batches.

A tenant that sends small JSON entity updates ends up with thousands of entity
batches. Stores ``--batches`` batches of 10 entities (as uploads do, with a
private embedded Redis-compatible server), then times, in this process:

- the first lookup (it reads the ids of every batch once: the per-process index
  of :mod:`shared.data.entity_index` starts empty);
- then lookups of ids no batch describes (the worst case: every batch is
  consulted) and of an id only the oldest batch holds;
- the old way, in the same run: opening every batch newest first with a filter
  on the id, as a lookup did before the index;
- the floor: one filtered read of the batch that holds the id, which a lookup
  that finds the id cannot avoid.

    .venv/bin/python bench/cold_start.py [--batches 3000] [--lookups 50]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.config import Settings  # noqa: E402
from shared.data.batches import batch_ids_newest_first  # noqa: E402
from shared.data.entity_index import EntityIndex  # noqa: E402
from shared.ingest.store import prepare_json, store, workspace  # noqa: E402
from shared.stack.embedded import start_embedded  # noqa: E402
from shared.storage import batch_path, open_storage  # noqa: E402


def main() -> int:
    """Store the batches, time the lookups, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--lookups", type=int, default=50)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="recsys-bench-cold-"))
    server = start_embedded(base / "redis")
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        settings = Settings(data_dir=base / "var")
        storage = open_storage(settings.storage_root())
        start = datetime(2024, 1, 1, tzinfo=UTC)
        t0 = time.perf_counter()
        for b in range(args.batches):
            body = {"entities": [{"id": f"e{b}_{i}", "type": "user", "metadata": {"i": i}}
                                 for i in range(10)]}
            with workspace(settings) as workdir:
                prepared, _ = prepare_json(body, workdir, settings)
                store(storage, r, "bench", prepared, (), start + timedelta(seconds=b))
        print(f"stored {args.batches} entity batches of 10 in {time.perf_counter() - t0:.1f} s")

        index = EntityIndex()
        t0 = time.perf_counter()
        assert index.latest(storage, r, "bench", "warm-up") is None
        first = time.perf_counter() - t0

        def timed(entity_id: str) -> float:
            t = time.perf_counter()
            index.latest(storage, r, "bench", entity_id)
            return time.perf_counter() - t

        unknown = statistics.median(timed(f"new-{n}") for n in range(args.lookups))
        oldest = statistics.median(timed("e0_3") for _ in range(args.lookups))
        assert index.latest(storage, r, "bench", "e0_3") is not None

        def old_way(entity_id: str) -> float:
            t = time.perf_counter()
            for batch_id in batch_ids_newest_first(r, "bench", "entities"):
                table = pq.read_table(storage.full_path(batch_path("bench", batch_id)),
                                      filesystem=storage.fs, filters=[("id", "==", entity_id)])
                if table.num_rows:
                    break
            return time.perf_counter() - t

        before = statistics.median(old_way(f"new-{n}") for n in range(3))
        oldest_batch = batch_ids_newest_first(r, "bench", "entities")[-1]

        def floor() -> float:
            t = time.perf_counter()
            pq.read_table(storage.full_path(batch_path("bench", oldest_batch)),
                          filesystem=storage.fs, filters=[("id", "==", "e0_3")])
            return time.perf_counter() - t

        one_read = statistics.median(floor() for _ in range(args.lookups))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)

    print(f"first lookup in a process (reads every batch's ids): {first * 1000:.0f} ms")
    print(f"then, an id no batch describes: {unknown * 1000:.1f} ms "
          f"(median of {args.lookups}; before the index: {before * 1000:.0f} ms, "
          f"{before / unknown:.0f}x slower)")
    print(f"an id only the oldest batch holds: {oldest * 1000:.1f} ms; floor, one filtered "
          f"read of that batch: {one_read * 1000:.1f} ms; ratio {oldest / one_read:.1f}")
    print(f"index memory: {index.size / 1e6:.1f} MB counted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
