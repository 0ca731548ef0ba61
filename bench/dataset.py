"""Benchmark: ``GET /dataset``'s summary of 10,000,000 interactions in 10 batches.

Stores ``--batches`` copies of a 1,000,000-row interactions batch (converted
from CSV as an upload is), then, each in a fresh process so peak memory is its
own, times :func:`shared.data.selection.summarise_data` over all of them, and the
floor: pyarrow reading the same four columns of every batch file and nothing
else, one file after another. Prints the medians of ``--repeat`` runs, their
ratio, and both sides' peak memory growth (the summary should hold about one
batch, not all of them).

    .venv/bin/python bench/dataset.py [--batches 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# The child processes: a summary of every batch, or pyarrow reading the same columns.
_CHILD = r"""
import json, sys, time
from datetime import UTC, datetime
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import fakeredis, pyarrow.parquet as pq
from shared.data.batches import BatchMeta, record_batches
from shared.data.selection import DataSpec
from shared.data.summary import summarise_data
from shared.storage import batch_path, open_storage

def peak_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

root, mode, metas = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
storage = open_storage(root)
r = fakeredis.FakeRedis(decode_responses=True)
record_batches(r, "bench", [BatchMeta(**m) for m in metas])
before = rss_mb()
t0 = time.perf_counter()
if mode == "summary":
    body = summarise_data(storage, r, "bench", DataSpec(), datetime.now(UTC))
    rows = body["interactions"]["total"]
else:
    rows = 0
    for m in metas:
        path = storage.full_path(batch_path("bench", m["batch_id"]))
        columns = ["type", "source_id", "target_id", "timestamp"]
        rows += pq.read_table(path, columns=columns).num_rows
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": rows,
                  "growth_mb": peak_mb() - before}))
"""


def main() -> int:
    """Store the batches, run both sides ``--repeat`` times, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per batch")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from ingest import generate

    from shared.config import Settings
    from shared.data.batches import BatchMeta, iso_utc
    from shared.ingest.csv_reader import prepare_csv
    from shared.ingest.store import Prepared, workspace
    from shared.storage import batch_path, open_storage

    base = Path(tempfile.mkdtemp(prefix="recsys-bench-dataset-"))
    try:
        settings = Settings(data_dir=base)
        storage = open_storage(settings.storage_root())
        csv_path = base / "interactions.csv"
        generate(csv_path, args.rows)
        metas = []
        with workspace(settings) as workdir:
            prepared = prepare_csv(csv_path, "bench.csv", workdir / "b.parquet", settings)
            assert isinstance(prepared, Prepared), prepared
            for i in range(args.batches):
                batch_id = f"b_{i:025x}"
                copy = workdir / f"{batch_id}.parquet"  # put_file moves its file
                shutil.copyfile(prepared.path, copy)
                storage.put_file(batch_path("bench", batch_id), copy)
                metas.append(BatchMeta(
                    batch_id=batch_id, timestamp=iso_utc(datetime.now(UTC)), tags=(),
                    kind="interactions", entity_count=0, interaction_count=prepared.rows,
                    bytes=prepared.bytes).__dict__)
        total = args.rows * args.batches
        print(f"stored {args.batches} batches of {args.rows:,} rows "
              f"({prepared.bytes / 1e6:.1f} MB each)")
        runs: dict[str, list[dict[str, float]]] = {"summary": [], "read": []}
        for _ in range(args.repeat):
            for mode in runs:
                out = subprocess.run(
                    [sys.executable, "-c", _CHILD, str(ROOT), settings.storage_root(), mode,
                     json.dumps(metas, default=list)],
                    capture_output=True, text=True, check=True).stdout
                result = json.loads(out)
                assert result["rows"] == total, result
                runs[mode].append(result)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    summary = statistics.median(r["seconds"] for r in runs["summary"])
    read = statistics.median(r["seconds"] for r in runs["read"])
    growth = statistics.median(r["growth_mb"] for r in runs["summary"])
    read_growth = statistics.median(r["growth_mb"] for r in runs["read"])
    print(f"summary of {total:,} interactions: {summary:.2f} s (median of {args.repeat})")
    print(f"pyarrow reading the same columns:  {read:.2f} s")
    print(f"ratio:                            {summary / read:.2f}")
    print(f"summary memory growth (peak):      {growth:.0f} MB "
          f"(pyarrow reading them one by one: {read_growth:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
